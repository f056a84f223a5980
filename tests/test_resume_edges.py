"""Ctrl-C and --resume at their edges: a budget given on resume, the data changed in between, an
interruption before the first epoch ends or after the last, and what the CLI says and returns."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import time

import pytest
import yaml
from conftest import FAST, make_image
from rich.console import Console

import vistrain
from vistrain.cli import build_parser, main
from vistrain.progress import SilentReporter
from vistrain.training.trainer import TrainError

FT = dict(mode="finetune", epochs=2, batch_size=8, **FAST)


class StopIn(SilentReporter):
    """Raises ``error`` where a person would press Ctrl-C (or the process would die): on entering
    stage ``stage``, at its first progress step when ``step``, or on a log line containing ``log``."""

    def __init__(self, stage: str | None = None, step: bool = False, log: str | None = None,
                 error: type[BaseException] = KeyboardInterrupt):
        self.at_stage, self.step, self.at_log, self.error = stage, step, log, error

    @contextlib.contextmanager
    def stage(self, name, total, unit="img"):
        if name == self.at_stage and not self.step:
            raise self.error
        def advance(n):
            if name == self.at_stage:
                raise self.error
        yield advance

    def log(self, message):
        if self.at_log and self.at_log in message:
            raise self.error("stopped")


def _cli_train(argv: list[str], reporter) -> tuple[int, str]:
    """``vistrain train ...`` in-process with our reporter: (exit code, what it printed)."""
    args = build_parser().parse_args(["train", *argv])
    buffer = io.StringIO()
    code = args._run(args, Console(file=buffer, width=300), reporter)
    return code, buffer.getvalue()


def _epochs(out) -> list[int]:
    with (out / "history.csv").open() as f:
        return [int(r["epoch"]) for r in csv.DictReader(f)]


def test_ctrl_c_in_the_first_epoch_exits_130_and_resume_starts_fine_tuning_over(class_folders, tmp_path, cache_dir):
    out = tmp_path / "run"
    flags = [str(class_folders), "--out", str(out), "--cache-dir", str(cache_dir), "--mode", "finetune",
             "--epochs", "2", "--batch-size", "8", "--image-size", "64", "--no-time-budget"]
    code, said = _cli_train(flags, StopIn(stage="fine-tune", step=True))
    assert code == 130
    assert "Interrupted (Ctrl-C)" in said and "0 of 2 fine-tuning epochs done" in said and "Done" not in said
    assert f"vistrain train {class_folders} --out {out} --resume" in said
    # The best model so far (the probe: no epoch finished) is saved, and the plan is kept to resume from.
    assert (out / "model.safetensors").exists() and (out / "checkpoint" / "state.json").exists()
    (out / "export").mkdir()  # as if exported from the interrupted run's model

    # --patience may change on resume (a limit, not the schedule); it is a flag of its own now.
    assert main(["train", str(class_folders), "--out", str(out), "--resume", "--patience", "5",
                 "--cache-dir", str(cache_dir)]) == 0
    assert _epochs(out) == [1, 2] and not (out / "checkpoint").exists()
    config = json.loads((out / "config.json").read_text())
    assert config["stage"] == "finetune" and config["training"]["patience"] == 5
    notes = json.loads((out / "metrics.json").read_text())["notes"]
    assert any("export/ is of the model saved there before this resumed run" in n and f"vistrain export {out}" in n
               for n in notes), notes

    # Starting over from the probe is the run that was never interrupted.
    straight = vistrain.train(class_folders, out=tmp_path / "straight", cache_dir=cache_dir, **FT)
    with (out / "history.csv").open() as f:
        resumed_losses = [round(float(r["valid_loss"]), 4) for r in csv.DictReader(f)]
    assert resumed_losses == [round(h.valid_loss, 4) for h in straight.result.finetune.history]


def test_ctrl_c_in_the_familiarity_pass_says_no_model_was_written_and_resume_finishes(class_folders, tmp_path,
                                                                                        cache_dir):
    out = tmp_path / "run"
    flags = [str(class_folders), "--out", str(out), "--cache-dir", str(cache_dir), "--mode", "finetune",
             "--epochs", "2", "--batch-size", "8", "--image-size", "64", "--no-time-budget"]
    code, said = _cli_train(flags, StopIn(stage="familiar"))
    assert code == 130
    assert "no model written" in said and f"vistrain train {class_folders} --out {out} --resume" in said
    assert not (out / "model.safetensors").exists()

    resumed = vistrain.train(class_folders, out=out, resume=True, cache_dir=cache_dir)
    assert [h.epoch for h in resumed.result.finetune.history] == [1, 2]  # none trained again
    assert (out / "familiar.safetensors").exists() and not (out / "checkpoint").exists()


def test_the_api_returns_an_interrupted_run_that_says_so(class_folders, tmp_path, cache_dir):
    def ctrl_c(epoch, score):
        raise KeyboardInterrupt

    run = vistrain.train(class_folders, out=tmp_path / "run", cache_dir=cache_dir, on_epoch=ctrl_c, **FT)
    assert run.result.finetune.interrupted and len(run.result.finetune.history) == 1
    assert (tmp_path / "run" / "checkpoint" / "state.json").exists()


def test_a_time_budget_given_on_resume_counts_from_the_resume_and_the_files_say_so(class_folders, tmp_path,
                                                                                     cache_dir):
    out = tmp_path / "run"
    opts = {**FT, "epochs": 3, "time_budget": 600.0}  # 3 epochs of 64 px images fit 600 s anywhere
    first = vistrain.train(class_folders, out=out, cache_dir=cache_dir, reporter=StopIn(log="epoch 1/"), **opts)
    assert first.result.finetune.interrupted and first.result.finetune.planned_epochs == 3

    # No further epoch fits a budget this small: the run ends on what it has, and is finished.
    resumed = vistrain.train(class_folders, out=out, resume=True, cache_dir=cache_dir, time_budget=0.01)
    ft = resumed.result.finetune
    assert [h.epoch for h in ft.history] == [1] and ft.out_of_time and not ft.interrupted
    assert resumed.result.stage == "finetune" and not (out / "checkpoint").exists()
    assert any("0.01 s time budget given with --resume leaves no room for epoch 2 of 3" in n
               for n in resumed.result.notes), resumed.result.notes
    # The 600 s budget planned the 3 epochs, the 0.01 s one stopped them: the file says both, and
    # repeats the planned run (no budget, 3 epochs).
    text = (out / "train_config.yaml").read_text()
    header = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
    assert "The 600 s time budget planned this run" in header
    assert "resumed with a 0.01 s time budget (counted from the resume), which stopped fine-tuning after epoch 1 " \
           "of 3" in header
    saved = yaml.safe_load(text)
    assert saved["time_budget"] is None and saved["epochs"] == 3


def test_resume_holds_the_run_to_its_data_and_data_settings(class_folders, tmp_path, cache_dir):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="stopped"):  # a crash after epoch 1: the checkpoint stays
        vistrain.train(class_folders, out=out, cache_dir=cache_dir, reporter=StopIn(log="epoch 1/", error=RuntimeError),
                       **FT)
    pending_split = (out / "checkpoint" / "split.csv").read_text()

    # The split's settings shaped the epochs so far, like --seed: another value is refused by name.
    with pytest.raises(TrainError, match=r"valid_fraction 0.2 \(now 0.3\)"):
        vistrain.train(class_folders, out=out, resume=True, cache_dir=cache_dir, valid_fraction=0.3)
    with pytest.raises(TrainError, match=r"label_from_name none \(now \(\.\+\)_\\d\+\)"):
        vistrain.train(class_folders, out=out, resume=True, cache_dir=cache_dir, label_from_name=r"(.+)_\d+")

    # A new class folder: a clear error naming it, not a state_dict size mismatch.
    extra = class_folders / "ovals"
    extra.mkdir()
    for i in range(4):
        make_image("circles", seed=7000 + i).save(extra / f"oval_{i}.png")
    with pytest.raises(TrainError, match=r"classes .* changed .*new class\(es\) 'ovals'"):
        vistrain.train(class_folders, out=out, resume=True, cache_dir=cache_dir)
    shutil.rmtree(extra)

    # Missing images would change the split, the steps per epoch and the class balance halfway.
    gone = class_folders / "squares" / "squares_3.png"
    kept = gone.read_bytes()
    gone.unlink()
    with pytest.raises(TrainError, match=r"1 of its 24 images are missing .*squares_3\.png"):
        vistrain.train(class_folders, out=out, resume=True, cache_dir=cache_dir)
    gone.write_bytes(kept)

    # Added images are left out, and the run says so: it finishes on the split it started with.
    for i in range(3):
        make_image("stripes", seed=8000 + i).save(class_folders / "stripes" / f"stripes_new_{i}.png")
    resumed = vistrain.train(class_folders, out=out, resume=True, cache_dir=cache_dir, valid_fraction=0.2)
    assert [h.epoch for h in resumed.result.finetune.history] == [1, 2]
    assert any(n.startswith("3 image(s) added to") and "were left out" in n for n in resumed.result.notes)
    assert (out / "split.csv").read_text() == pending_split
    assert resumed.metrics["valid"]["n"] == sum(",valid," in line for line in pending_split.splitlines())


def test_resume_after_stopping_before_fine_tuning_says_what_to_do(class_folders, tmp_path, cache_dir):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):  # in the probe stage: nothing trained, nothing to continue
        vistrain.train(class_folders, out=out, cache_dir=cache_dir, reporter=StopIn(log="Linear probe"), **FT)
    with pytest.raises(TrainError, match=r"stopped before fine-tuning began .*train again without --resume"):
        vistrain.train(class_folders, out=out, resume=True, cache_dir=cache_dir)


def test_resume_refuses_images_edited_since_the_run_started(class_folders, tmp_path, cache_dir):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="stopped"):  # a crash after epoch 1: the checkpoint stays
        vistrain.train(class_folders, out=out, cache_dir=cache_dir, reporter=StopIn(log="epoch 1/", error=RuntimeError),
                       **FT)
    # Same path and label, other pixels (a retouch, a crop): the epochs so far learnt the old ones,
    # and the split, the probe and the class balance were made from them.
    edited = class_folders / "squares" / "squares_2.png"
    original, stat = edited.read_bytes(), edited.stat()
    make_image("squares", seed=9100).save(edited)
    os.utime(edited, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    assert edited.read_bytes() != original
    with pytest.raises(TrainError, match=r"cannot resume on .*1 changed content since the run started \(same "
                                         r"path, other bytes: \S*/squares/squares_2\.png\)\..*restore those images"):
        vistrain.train(class_folders, out=out, resume=True, cache_dir=cache_dir)

    # The same bytes back (a later mtime than either: the check is on the content, not the clock).
    edited.write_bytes(original)
    os.utime(edited, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10_000_000_000))
    resumed = vistrain.train(class_folders, out=out, resume=True, cache_dir=cache_dir)
    assert [h.epoch for h in resumed.result.finetune.history] == [1, 2]


def test_resume_of_a_run_that_recorded_no_content_hashes_skips_the_check(class_folders, tmp_path, cache_dir):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="stopped"):
        vistrain.train(class_folders, out=out, cache_dir=cache_dir, reporter=StopIn(log="epoch 1/", error=RuntimeError),
                       **FT)
    # A split.csv from before it kept content hashes: path, label, split alone.
    split = out / "checkpoint" / "split.csv"
    with split.open(newline="") as f:
        rows = [(r["path"], r["label"], r["split"]) for r in csv.DictReader(f)]
    with split.open("w", newline="") as f:
        csv.writer(f).writerows([("path", "label", "split"), *rows])
    make_image("squares", seed=9100).save(class_folders / "squares" / "squares_2.png")
    resumed = vistrain.train(class_folders, out=out, resume=True, cache_dir=cache_dir)
    assert [h.epoch for h in resumed.result.finetune.history] == [1, 2]


class SleepThenStop(StopIn):
    """Crashes on a log line as StopIn does, after ``seconds`` of work that no checkpoint counted."""

    def __init__(self, log: str, seconds: float):
        super().__init__(log=log, error=RuntimeError)
        self.seconds = seconds

    def log(self, message):
        if self.at_log in message:
            time.sleep(self.seconds)
        super().log(message)


def test_a_resumed_runs_training_time_is_every_sessions(class_folders, tmp_path, cache_dir):
    from vistrain.export.card import _made

    out, state = tmp_path / "run", tmp_path / "run" / "checkpoint" / "state.json"
    opts = {**FT, "epochs": 3}
    at_epoch = []

    def ctrl_c(epoch, score):  # after the epoch's checkpoint was written
        at_epoch.append(json.loads(state.read_text())["session_seconds"])
        raise KeyboardInterrupt

    # Session 1: Ctrl-C after epoch 1. Never resumed, its metrics.json is as ever: this call's seconds.
    assert vistrain.train(class_folders, out=out, cache_dir=cache_dir, on_epoch=ctrl_c, **opts).result.finetune.interrupted
    first = json.loads((out / "metrics.json").read_text())
    assert "total_seconds" not in first and "session_seconds" not in first
    assert "- The run took" in "\n".join(_made({"training": {"resume": False}}, first, out))
    # The checkpoint recorded the session at each epoch, and again at its end: the whole call counts.
    recorded = json.loads(state.read_text())["session_seconds"]
    assert len(at_epoch[0]) == 1 and at_epoch[0][0] <= first["seconds"] <= recorded[0] and len(recorded) == 1

    # Session 2: a crash 1.5 s after epoch 2's checkpoint; those seconds count too.
    t = time.perf_counter()
    with pytest.raises(RuntimeError, match="stopped"):
        vistrain.train(class_folders, out=out, resume=True, cache_dir=cache_dir, reporter=SleepThenStop("epoch 2/", 1.5))
    wall = time.perf_counter() - t
    recorded = json.loads(state.read_text())["session_seconds"]
    assert len(recorded) == 2 and wall - 0.5 < recorded[1] <= wall + 0.1

    # Session 3 finishes: metrics.json gives each session, their total, and this call's seconds as before.
    third = vistrain.train(class_folders, out=out, resume=True, cache_dir=cache_dir)
    assert [h.epoch for h in third.result.finetune.history] == [1, 2, 3] and not (out / "checkpoint").exists()
    m = json.loads((out / "metrics.json").read_text())
    assert m["session_seconds"][:2] == recorded and m["session_seconds"][2] == m["seconds"]
    assert m["total_seconds"] == round(sum(m["session_seconds"]), 1) > m["seconds"] + 1.5
    config = json.loads((out / "config.json").read_text())
    made = "\n".join(_made(config, m, out))
    total, last = (f"{x:.0f} s" if x >= 10 else f"{x:.1f} s" for x in (m["total_seconds"], m["seconds"]))
    assert (f"- Training took {total} in all, over 3 sessions (interrupted and resumed); the last session took "
            f"{last} on the CPU.") in made

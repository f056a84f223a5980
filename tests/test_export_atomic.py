"""An export is swapped in whole or not at all: a failed or interrupted re-export leaves the earlier
export as it was (and usable), a failed first export leaves no folder, and the files vistrain did not
write in an export folder survive a re-export."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from vistrain.cli import main
from vistrain.export import ExportConfig, ExportError, export_run
from vistrain.export.card import CARD_FILE, OWN_CARD_FILE
from vistrain.progress import SilentReporter
from vistrain.runtime import OnnxPredictor


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture
def run_with_int8_export(trained_run, exported_run, tmp_path) -> Path:
    """A copy of the shared run holding the shared int8 export as its export/ (the same weights and
    settings, so it is current), plus a file of the user's own there."""
    run = shutil.copytree(trained_run[0], tmp_path / "run", ignore=shutil.ignore_patterns("export"))
    shutil.copytree(exported_run, run / "export")
    (run / "export" / "notes.txt").write_text("deployed to the kiosk\n")
    assert OnnxPredictor.from_folder(run).variant == "int8"
    return run


def _leftovers(run: Path) -> list[str]:
    return sorted(p.name for p in run.iterdir() if ".tmp-" in p.name)


class _StopAt(SilentReporter):
    """Ctrl-C as the user presses it, when a stage starts."""

    def __init__(self, stage: str):
        self.stop_at, self.seen = stage, []

    @contextlib.contextmanager
    def stage(self, name, total, unit="img"):
        self.seen.append(name)
        if name == self.stop_at:
            raise KeyboardInterrupt
        yield lambda n: None


@pytest.mark.parametrize("stage", ["export onnx", "int8"])
def test_an_interrupted_re_export_leaves_the_earlier_export_intact(run_with_int8_export, stage):
    run = run_with_int8_export
    before = _digests(run / "export")
    reporter = _StopAt(stage)
    with pytest.raises(KeyboardInterrupt):
        export_run(run, ExportConfig(int8=True, calibration_images=12, max_accuracy_drop=100), reporter)
    assert stage in reporter.seen
    assert _digests(run / "export") == before  # model.int8.onnx included: it used to be deleted first
    assert _leftovers(run) == []
    predictor = OnnxPredictor.from_folder(run)  # what predict and serve load: still the int8 export
    assert predictor.variant == "int8" and predictor.model_path.is_file()


def _run_with_movable_data(run: Path, tmp_path: Path) -> Path:
    """Point the run's split.csv at a copy of its photos, so that a test can take them away."""
    photos = tmp_path / "photos"
    with (run / "split.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        copy = photos / Path(r["path"]).parent.name / Path(r["path"]).name
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(r["path"], copy)
        r["path"] = str(copy)
    with (run / "split.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return photos


def test_export_after_the_data_moved_says_so_and_keeps_the_earlier_export(run_with_int8_export, tmp_path, capsys):
    run = run_with_int8_export
    photos = _run_with_movable_data(run, tmp_path)
    before = _digests(run / "export")
    shutil.move(photos, tmp_path / "moved")
    assert main(["export", str(run), "--int8"]) == 1
    out = " ".join(capsys.readouterr().out.split())
    n_valid = sum(1 for r in csv.DictReader((run / "split.csv").open()) if r["split"] == "valid")
    assert f"export failed: {run}: the {n_valid} validation images listed in {run / 'split.csv'} are missing" in out
    assert f"(first: {photos}" in out and "move the data back to" in out
    assert _digests(run / "export") == before and _leftovers(run) == []
    assert OnnxPredictor.from_folder(run).variant == "int8"


def test_a_failed_first_export_leaves_no_folder(trained_run, tmp_path):
    run = shutil.copytree(trained_run[0], tmp_path / "run", ignore=shutil.ignore_patterns("export"))
    shutil.rmtree(_run_with_movable_data(run, tmp_path))
    with pytest.raises(ExportError, match="validation images listed in .* are missing"):
        export_run(run)
    assert not (run / "export").exists() and _leftovers(run) == []
    # --out in folders that do not exist yet: none of them is left behind either.
    with pytest.raises(ExportError):
        export_run(run, ExportConfig(out=tmp_path / "a" / "b" / "export"))
    assert not (tmp_path / "a").exists()


def test_a_re_export_keeps_the_users_files_and_says_the_int8_file_went(run_with_int8_export, capsys):
    run = run_with_int8_export
    (run / "export" / CARD_FILE).write_text("# our kiosk model\n")  # the user's: the card goes beside it
    (run / "export" / "samples").mkdir()
    (run / "export" / "samples" / "a.txt").write_text("a\n")
    (run / "export").chmod(0o750)
    assert main(["export", str(run)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    # Without --int8 the earlier int8 file goes (it would be served with another export's figures): said once.
    assert out.count("note: the earlier export's model.int8.onnx was removed: this export is fp32 only") == 1
    export = run / "export"
    assert not (export / "model.int8.onnx").exists()
    assert (export / "notes.txt").read_text() == "deployed to the kiosk\n"
    assert (export / "samples" / "a.txt").read_text() == "a\n"
    assert (export / CARD_FILE).read_text() == "# our kiosk model\n"
    assert (export / OWN_CARD_FILE).read_text().count("model.int8.onnx") == 0
    assert f"{export / CARD_FILE}isnotvistrain's" in out.replace(" ", "")  # rich breaks long paths anywhere
    info = json.loads((export / "export.json").read_text())
    assert set(info["models"]) == {"fp32"} and info["default"] == "fp32"
    assert OnnxPredictor.from_folder(run).variant == "fp32" and _leftovers(run) == []
    assert export.stat().st_mode & 0o777 == 0o750  # its own, not the temporary folder's owner-only ones


def test_a_first_export_folder_gets_the_umasks_permissions(exported_run):
    import os

    mask = os.umask(0)
    os.umask(mask)
    assert exported_run.stat().st_mode & 0o777 == 0o777 & ~mask  # a server of another user reads it

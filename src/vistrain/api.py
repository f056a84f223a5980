"""The library's front door: train, evaluate and predict, each one call returning plain results.

The CLI is a thin layer over these functions; they compose the stages (data -> models -> train ->
evaluate) and write the run folder.
"""

from __future__ import annotations

import contextlib
import csv
import json
import platform
import shlex
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from vistrain import __version__
from vistrain.clean.audit import quick_audit
from vistrain.clean.render import summary_line
from vistrain.config_file import CONFIG_NAME, load_config, normalise, save_config
from vistrain.data.dataset import (
    DataConfig,
    DatasetIndex,
    build_index,
    resolve_cache_dir,
)
from vistrain.data.split import read_split, write_split
from vistrain.evaluation.confidence import apply_confidence, fit_confidence
from vistrain.evaluation.labelled import (
    labelled_index,
    labelled_metrics,
    predict_labelled,
    tta_gain,
)
from vistrain.evaluation.metrics import classification_metrics
from vistrain.evaluation.predictor import Predictor
from vistrain.familiarity import FAMILIAR_FILE
from vistrain.models.classifier import save_model
from vistrain.models.registry import ensemble_members
from vistrain.prediction import (  # rows, CSV and --into sorting: shared with the torch-free export path
    answer_kind,  # noqa: F401 -- part of this module's interface
    check_answer_options,
    classify_files,
    sort_into,
    write_predictions_csv,
)
from vistrain.progress import Reporter, SilentReporter
from vistrain.training.checkpoint import (
    CHECKPOINT_DIR,
    Sessions,
    in_progress_file,
    record_sessions,
    recorded_sessions,
    remove_checkpoint,
)
from vistrain.training.device import resolve_device
from vistrain.training.distributed import init_from_env, is_main, world_size
from vistrain.training.trainer import (
    TrainConfig,
    TrainError,
    TrainResult,
    nothing_to_resume,
    run_training,
)


@dataclass
class Run:
    """A trained model and what is known about it; ``predict`` works straight away."""

    path: Path
    predictor: Predictor
    metrics: dict = field(default_factory=dict)
    result: TrainResult | None = None
    seconds: float | None = None  # wall time of the whole ``train`` call: scan, training, metrics, saving

    @property
    def classes(self) -> list[str]:
        return self.predictor.classes

    def predict(self, inputs: list[str | Path] | str | Path, top_k: int = 3, unsure: float | None = None) -> list[dict]:
        """Rows of {path, label, probability, unsure, top, error} for files and folders."""
        return predict(self, [inputs] if isinstance(inputs, (str, Path)) else list(inputs), top_k, unsure)

    def save(self, folder: Path | str) -> Path:
        """Copy the run's files to ``folder`` (the run is already saved where it was trained)."""
        folder = Path(folder)
        if folder.resolve() != self.path.resolve():
            shutil.copytree(self.path, folder, dirs_exist_ok=True)
        return folder


def load(folder: Path | str, device: str = "auto") -> Run:
    """Load a run folder (or any folder with model.safetensors + config.json); runs no code from it.

    ``device``: where the model runs, ``auto`` (a GPU when PyTorch sees one), ``cpu`` or ``cuda``."""
    folder = Path(folder)
    metrics_file = folder / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
    return Run(folder, Predictor.from_folder(folder, device=device), metrics)


def train(
    data: str | Path,
    out: str | Path = "runs/latest",
    reporter: Reporter | None = None,
    label_from_name: str | None = None,
    valid_fraction: float | None = None,
    cache_dir: Path | str | bool | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
    lr_find_steps: int = 100,
    **options,
) -> Run:
    """Train on a dataset folder (or CSV) and write the run folder ``out``; see :class:`TrainConfig`.

    ``valid_fraction``: the share held out when vistrain splits (None: 0.2, or on resume the run's own).
    ``cache_dir``: where scan results are cached; None for the default user cache, False for none.
    ``on_epoch(epoch, best validation score so far)`` runs after each fine-tuning epoch.
    ``lr="auto"``: run the learning-rate range test (``lr_find_steps`` steps) and use its suggestion.
    ``device="auto"|"cpu"|"cuda"``: where to train (auto: a GPU when PyTorch sees one; mixed precision there).
    ``resume=True``: continue the interrupted run in ``out`` (its settings, split and plan); a
    ``time_budget`` given then counts from the resume.

    Ctrl-C (KeyboardInterrupt) during fine-tuning returns normally with the best model so far written
    and ``run.result.finetune.interrupted`` true: ``resume=True`` continues it. Elsewhere it propagates.
    """
    t0 = time.perf_counter()
    out = Path(out)
    if options.get("resume"):
        options, label_from_name, valid_fraction = _resume_settings(Path(data), out, options, label_from_name,
                                                                    valid_fraction)
        if not (out / CHECKPOINT_DIR / "state.json").exists():  # said before anything is written there
            raise TrainError(nothing_to_resume(out))
    auto_lr = options.get("lr") == "auto"
    cfg = train_config(data, out, options, label_from_name, valid_fraction, cache_dir)
    data_cfg = cfg.data
    # Under torchrun: join the other processes (NCCL on GPUs, gloo on CPUs); only rank 0 reports and writes.
    backend = init_from_env(resolve_device(cfg.device))
    ui = (reporter or SilentReporter()) if is_main() else SilentReporter()
    index = build_index(data_cfg, reporter=ui)
    added_note = _match_resumed_data(index, out, ui) if cfg.resume else None
    if auto_lr and cfg.mode != "probe" and len(ensemble_members(cfg.backbone)) == 1:  # an ensemble only probes
        from vistrain.training.lr_find import lr_range_test

        found = lr_range_test(index, cfg, ui, steps=lr_find_steps)
        if found.informative:
            cfg.lr = found.suggestion
            ui.log(f"lr-find: learning rate {found.suggestion:.2g} (a tenth of {found.min_loss_lr:.2g}, the lowest loss)")
        else:
            ui.log(f"lr-find: the loss never fell (the probe already fits these photos), so it suggests nothing: "
                   f"the default learning rate {cfg.lr:g} is kept")
    ui.log(f"Layout: {index.layout.describe()} ({index.layout.root})")
    for note in index.layout.notes:
        ui.log(f"  note: {note}")
    if index.from_cache:
        ui.log(f"  scan: {index.from_cache} of {len(index.records) + len(index.skipped)} file(s) known from the cache")
    for r in index.skipped:
        ui.log(f"  skipped {r.path}: {r.reason}")
    audit = quick_audit(index)  # duplicates, conflicts, leaks, shortcuts: from the scan alone, no decoding
    ui.log(f"  {summary_line(audit)}"
           + (f" (details: {audit_command(data, label_from_name)})" if audit.findings else ""))
    earlier = _earlier_outputs(out)
    if is_main():  # under torchrun, the other processes train but write nothing
        if not cfg.resume:
            # An abandoned run's checkpoint (epochs, plan) would pair with this run's settings and split.
            remove_checkpoint(out)
        # Now, not only at the end: --resume after a crash (no Ctrl-C) needs the settings and the split.
        # They wait with the checkpoint: the run folder's own files are written together at the end.
        pending = out / CHECKPOINT_DIR
        pending.mkdir(parents=True, exist_ok=True)
        save_config(cfg, pending / CONFIG_NAME)
        if not (cfg.resume and in_progress_file(out, "split.csv").exists()):
            write_split(index.records, pending / "split.csv")
    if backend:
        ui.log(f"Data-parallel training over {world_size()} processes ({backend})")
    # This call's seconds join the earlier sessions' (a resumed run's): metrics.json and the card give the total.
    sessions = Sessions(recorded_sessions(out) if cfg.resume else [], started=t0)
    try:
        result = run_training(index, cfg, ui, on_epoch=on_epoch, sessions=sessions)
    except BaseException:
        if is_main():  # a crash, or Ctrl-C outside the epochs: the session counts until now for --resume
            with contextlib.suppress(OSError):  # e.g. a full disk: the error to show is the one raised
                record_sessions(out, sessions)
        raise
    if backend:
        result.notes.append(f"data-parallel fine-tuning over {world_size()} processes ({backend})")
    if added_note:
        result.notes.append(added_note)
    if earlier:
        renew = " and ".join(f"`vistrain {command} {out}`" for _, command in earlier)
        names, verb = " and ".join(n for n, _ in earlier), "is" if len(earlier) == 1 else "are"
        # On resume, out's model is the interrupted run's (or an earlier run's): what was made from it is stale too.
        result.notes.append(f"{out}'s {names} {verb} of the model saved there before this resumed run, not of the "
                            f"one it finished, until {renew}" if cfg.resume else
                            f"{out} held an earlier run, now replaced; its {names} {verb} of the earlier model "
                            f"until {renew}")
    predictor = Predictor(result.model, result.model_config, familiarity=result.familiarity)  # on the training device
    metrics = _final_metrics(index, result, predictor, ui, cfg.probe_c)
    y_valid = [result.model_config.classes.index(r.label) for r in index.split("valid")]
    apply_confidence(result.model_config, fit_confidence(result.valid_logits, y_valid))
    if is_main():
        # A resumed run records the budget that planned its epochs (the one given now only stopped them,
        # as the notes say): train_config.yaml then repeats the run, its header names the right budget.
        record = cfg if result.planned_by_budget == cfg.time_budget else replace(cfg, time_budget=result.planned_by_budget)
        _write_run(out, index, record, result, metrics, sessions)
        audit.save(out / "audit.json")
        if result.finetune and result.finetune.interrupted:
            record_sessions(out, sessions)  # kept for --resume, with this session's seconds to the end
        else:
            remove_checkpoint(out)  # finished: the run folder holds the result
    return Run(out, predictor, metrics, result, seconds=time.perf_counter() - t0)


def audit_command(data: str | Path, label_from_name: str | None) -> str:
    """The ``vistrain audit`` that reads ``data`` as training did, to paste into a shell: without its
    --label-from-name, a flat folder reads as class folders and the audit finds nothing at all."""
    return f"vistrain audit {shlex.quote(str(data))}" + (
        f" --label-from-name {shlex.quote(label_from_name)}" if label_from_name else "")


def train_config(data: str | Path, out: str | Path, options: dict, label_from_name: str | None = None,
                 valid_fraction: float | None = None, cache_dir: Path | str | bool | None = None) -> TrainConfig:
    """The TrainConfig ``train`` runs with, from its arguments. Constructing it checks every setting
    (the device included), so callers that only want the check (sweep's space) build it too.
    ``lr="auto"`` stands in as the default rate: ``train`` replaces it with the range test's suggestion."""
    data_cfg = DataConfig(Path(data), label_from_name,
                          DataConfig.valid_fraction if valid_fraction is None else valid_fraction,
                          options.get("seed", 0), cache_dir=resolve_cache_dir(cache_dir))
    if options.get("lr") == "auto":
        options = {**options, "lr": TrainConfig.lr}
    return TrainConfig(data=data_cfg, out=Path(out), **options)


def _earlier_outputs(out: Path) -> list[tuple[str, str]]:
    """What an earlier run in ``out`` made from its model, which training again does not rewrite:
    (name, the command that renews it)."""
    if not (out / "model.safetensors").is_file():
        return []
    return [(name, command) for name, command in (("export/", "export"), ("report.html", "report"))
            if (out / name.rstrip("/")).exists()]


def find_lr(data: str | Path, reporter: Reporter | None = None, label_from_name: str | None = None,
            valid_fraction: float = 0.2, cache_dir: Path | str | bool | None = None, steps: int = 100,
            start: float = 1e-7, end: float = 1.0, **options):
    """The learning-rate range test on a training set (see :mod:`vistrain.training.lr_find`)."""
    from vistrain.training.lr_find import lr_range_test

    ui = reporter or SilentReporter()
    cfg = train_config(data, Path("."), options, label_from_name, valid_fraction, cache_dir)
    return lr_range_test(build_index(cfg.data, reporter=ui), cfg, ui, steps, start, end)


# What a resumed run may change: its limits and where it runs, not how it trains.
CHANGEABLE_ON_RESUME = frozenset({"time_budget", "device", "max_memory", "patience", "familiarity"})


def _shown(value, key: str = "") -> str:
    if value is None:  # chosen by the run (image size, probe C); for labels, none: the folders give them
        return "none" if key == "label_from_name" else "auto"
    return str(value)


def _resume_settings(data: Path, out: Path, options: dict, label_from_name: str | None,
                     valid_fraction: float | None) -> tuple[dict, str | None, float | None]:
    """The interrupted run's settings (its train_config.yaml), overridden by the options given now;
    and its data settings (``label_from_name``, ``valid_fraction``)."""
    saved_path = in_progress_file(out, CONFIG_NAME)
    if not saved_path.exists():
        return options, label_from_name, valid_fraction  # an older run: the options given now are all there is
    saved = load_config(saved_path)
    if "data" in saved and Path(saved["data"]).resolve() != data.resolve():
        raise TrainError(f"{out}: cannot resume on {data}: the run was trained on {saved['data']}")
    known = {f.name for f in fields(TrainConfig)} - {"data", "out", "resume"}
    if options.get("lr") == "auto" and "lr" in saved:  # the run's own rate: found at its start, if auto then too
        options = {k: v for k, v in options.items() if k != "lr"}
    # The rest shaped the interrupted epochs (schedule, batches, augmentation, split): taking a new
    # value halfway would splice two different runs, so a differing one is refused, not ignored.
    # Typed as load_config typed the saved file (floats, AugmentConfig), so equal settings compare equal.
    now = normalise({k: v for k, v in options.items() if k in known - CHANGEABLE_ON_RESUME and k in saved},
                    "the settings given with --resume")
    # The labels and the split come from these: the epochs so far learnt from them (split.csv keeps the
    # split, but train_config.yaml must not record a fraction that did not make it).
    given = normalise({k: v for k, v in (("label_from_name", label_from_name), ("valid_fraction", valid_fraction))
                       if v is not None and k in saved}, "the settings given with --resume")
    changed = [f"{k} {_shown(saved[k], k)} (now {_shown(v, k)})" for k, v in {**now, **given}.items() if v != saved[k]]
    if changed:
        raise TrainError(f"{out}: --resume continues the interrupted run as it was set up, and these settings "
                         f"cannot change halfway: {', '.join(changed)}. Resume without them, or train into a "
                         "new --out.")
    merged = {**{k: v for k, v in saved.items() if k in known}, **options}
    return (merged, label_from_name if label_from_name is not None else saved.get("label_from_name"),
            valid_fraction if valid_fraction is not None else saved.get("valid_fraction"))


def _match_resumed_data(index: DatasetIndex, out: Path, ui: Reporter) -> str | None:
    """Hold a resumed run to the images it started with (its split.csv): new or missing classes, and
    missing, relabelled or edited images, are refused by name, since the checkpoint's network has one
    output per class and its epochs, schedule and class balance were set by those images. Images added
    since are left out of this run (returned: a note saying so); the next run can use them."""
    split_file = in_progress_file(out, "split.csv")
    if not split_file.exists():
        return None
    saved = read_split(split_file, "label")
    root = index.layout.root
    saved_classes, classes = set(saved.values()), set(index.classes)
    if saved_classes != classes:
        new, gone = sorted(classes - saved_classes), sorted(saved_classes - classes)
        what = "; ".join(part for part in (
            f"new class(es) {', '.join(map(repr, new))}" if new else "",
            f"class(es) {', '.join(map(repr, gone))} no longer there" if gone else "") if part)
        raise TrainError(f"{out}: cannot resume: the classes in {root} changed since the run started ({what}); "
                         f"its network has one output per class ({', '.join(sorted(saved_classes))}). Restore the "
                         f"data as it was, or train the new classes into a new --out")
    now = {r.path: r for r in index.records}
    missing = [p for p in saved if p not in now]
    relabelled = [p for p in saved if p in now and now[p].label != saved[p]]
    edited = _edited(split_file, now)
    if missing or relabelled or edited:
        what = "; ".join(part for part in (
            f"{len(missing)} of its {len(saved)} images are missing or no longer usable (e.g. {missing[0]})"
            if missing else "",
            f"{len(relabelled)} changed class (e.g. {relabelled[0]}, was {saved[relabelled[0]]!r})"
            if relabelled else "",
            f"{len(edited)} changed content since the run started (same path, other bytes: {_some(edited)})"
            if edited else "") if part)
        raise TrainError(f"{out}: cannot resume on {root}: {what}. The epochs so far trained on the split in "
                         f"{split_file}, which sets the rest of the schedule and the class balance: restore those "
                         f"images, or train again into a new --out")
    added = [r for r in index.records if r.path not in saved]
    if not added:
        return None
    index.records[:] = [r for r in index.records if r.path in saved]
    note = (f"{len(added)} image(s) added to {root} since the run started (e.g. {added[0].path}) were left out: "
            f"a resumed run finishes on the split it started with; train again to use them")
    ui.log(f"  note: {note}")
    return note


def _edited(split_file: Path, now: dict) -> list[str]:
    """The images of ``split_file`` whose bytes differ from the content hash recorded there at training
    time: the scan hashes every file anyway (its cache is keyed by size and mtime, so an edit is read
    again). A split.csv from before the hashes were kept has none: its images go unchecked."""
    try:
        hashes = read_split(split_file, "sha1")
    except KeyError:  # no sha1 column
        return []
    return [p for p, sha1 in hashes.items() if sha1 and p in now and now[p].sha1 != sha1]


def _some(paths: list[str], n: int = 3) -> str:
    """The first ``n`` of ``paths``, and how many more."""
    more = len(paths) - n
    return ", ".join(paths[:n]) + (f" and {more} more" if more > 0 else "")


OPTIMISTIC = "a slightly optimistic estimate"  # ends metrics["valid"]["note"] when validation chose something


def _final_metrics(index: DatasetIndex, result: TrainResult, predictor: Predictor, ui: Reporter,
                   probe_c: float | None) -> dict:
    classes = result.model_config.classes
    valid = index.split("valid")
    y_valid = np.array([classes.index(r.label) for r in valid])
    metrics = {"valid": classification_metrics(y_valid, result.valid_logits.argmax(1), classes)}
    if result.finetune and result.finetune.history:
        use = "chose the kept stage and the best epoch"
    elif probe_c is None:
        use = "chose the probe's regularisation strength (and between ensemble and single probe, if both were fitted)"
    else:
        use = None
    metrics["valid"]["note"] = (f"validation images {use}: {OPTIMISTIC}" if use
                                else "validation images were not used for fitting")
    test = index.split("test")
    if test:
        y_test = np.array([classes.index(r.label) for r in test])
        if result.test_logits is not None:  # the kept probe, from cached features
            y_hat = result.test_logits.argmax(1)
        else:
            with ui.stage("test", len(test)) as advance:
                preds = predictor.predict_paths([r.path for r in test], progress=advance)
            y_hat = np.array([int(np.argmax(p.probabilities)) for p in preds])
        metrics["test"] = classification_metrics(y_test, y_hat, classes)
    return metrics


def _timing(sessions: Sessions) -> dict:
    """metrics.json's times: ``seconds``, this ``train`` call's, as ever; for a resumed run also each
    session's (``session_seconds``, this one last) and their sum (``total_seconds``), unless its
    checkpoint was from before they were recorded."""
    now = round(sessions.now(), 1)
    every = sessions.seconds(now)
    if every is None or len(every) == 1:  # never resumed: this call is the whole run
        return {"seconds": now}
    return {"seconds": now, "total_seconds": round(sum(every), 1), "session_seconds": every}


def _write_run(out: Path, index: DatasetIndex, cfg: TrainConfig, result: TrainResult, metrics: dict,
               sessions: Sessions) -> None:
    import torch

    settings = {k: v for k, v in asdict(cfg).items() if k not in ("data", "out")}
    # What ran, next to what was asked (train_config.yaml keeps the request, e.g. auto, to stay portable,
    # except what the time budget decided: pinned there so that the file repeats the run on any machine).
    settings.update(device=result.device, device_requested=cfg.device, amp=result.amp)
    if result.mirror is not None:
        settings["mirror_check"] = {**asdict(result.mirror), "flips_used": result.mirror.keep_flips}
    if result.pinned:
        settings["pinned_by_time_budget"] = result.pinned
    settings["data"] = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg.data).items()}
    result.model_config.extra = {
        **result.model_config.extra,  # calibration
        "vistrain_version": __version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "stage": result.stage,
        "training": settings,
        "validation_accuracy": metrics["valid"]["accuracy"],
    }
    if result.familiarity is not None:
        f = result.familiarity
        result.model_config.extra["familiarity"] = {"file": FAMILIAR_FILE, "threshold": round(f.threshold, 6),
                                                    "keep": f.keep, "neighbours": len(f.bank), "n_valid": f.n_valid,
                                                    "n_valid_familiar": f.n_kept}
    save_model(out, result.model, result.model_config)
    (out / FAMILIAR_FILE).unlink(missing_ok=True)  # an earlier run's, which would judge by other features
    if result.familiarity is not None:
        result.familiarity.save(out)
    (out / "metrics.json").write_text(json.dumps({
        **metrics,
        "stage": result.stage,
        "probe_valid_accuracy": result.probe_accuracy,
        "finetune_best_valid_accuracy": result.finetune.best_accuracy if result.finetune and result.finetune.history else None,
        **_timing(sessions),
        "device": result.device,
        "amp": result.amp,
        "notes": result.notes,
    }, indent=2) + "\n")
    with (out / "history.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "train_loss", "train_accuracy", "valid_loss", "valid_accuracy", "seconds", "lr",
                    "data_wait"])
        for h in result.finetune.history if result.finetune else []:
            w.writerow([h.epoch, f"{h.train_loss:.5f}", f"{h.train_accuracy:.5f}", f"{h.valid_loss:.5f}",
                        f"{h.valid_accuracy:.5f}", f"{h.seconds:.1f}", f"{h.lr:.3g}", f"{h.data_wait:.2f}"])
    write_split(index.records, out / "split.csv")
    save_config(cfg, out / CONFIG_NAME, result.pinned, result.pin_caveat)
    (out / "data_report.json").write_text(json.dumps(index.report(), indent=2) + "\n")


def evaluate(run: str | Path | Run, data: str | Path, label_from_name: str | None = None,
             reporter: Reporter | None = None, cache_dir: Path | str | bool | None = None, tta: bool = False,
             device: str = "auto") -> dict:
    """Metrics of a saved model on a labelled folder (class folders, flat with file names that start
    with a class name or with a regex, or CSV).

    ``tta``: average each image with its mirror image; ``metrics["tta"]`` gives the gain.
    ``device``: where a run given as a folder is loaded (a :class:`Run` stays where it is)."""
    ui = reporter or SilentReporter()
    run = run if isinstance(run, Run) else load(run, device)
    index, y_true = labelled_index(data, label_from_name, cache_dir, run.classes, ui)
    views, similarity, unknown_pred = predict_labelled(run.predictor.outputs_from_paths, index, ui, tta)
    y_pred = views.mean(axis=1).argmax(axis=1)
    metrics = labelled_metrics(index, run.classes, y_true, y_pred, run.predictor.familiarity, similarity,
                               run.path, run.predictor.config.extra, unknown_pred)
    if tta:
        metrics["tta"] = tta_gain(views, y_true)
    return metrics


def predict(run: str | Path | Run, inputs: list[str | Path], top_k: int = 3, unsure: float | None = None,
            csv_path: Path | None = None, into: Path | None = None, reporter: Reporter | None = None,
            tta: bool = False, heatmap: Path | None = None, device: str = "auto") -> list[dict]:
    """Classify files and folders; optionally write a CSV, sort copies into class folders and write
    Grad-CAM heat maps (``heatmap``). ``unsure`` defaults to the run's stored threshold (0: never).
    ``device``: where a run given as a folder is loaded (a :class:`Run` stays where it is)."""
    check_answer_options(top_k, unsure)
    ui = reporter or SilentReporter()
    run = run if isinstance(run, Run) else load(run, device)
    threshold = unsure if unsure is not None else run.predictor.config.unsure_threshold
    rows = classify_files(lambda paths, advance: run.predictor.predict_paths(paths, progress=advance, tta=tta),
                          run.classes, inputs, top_k, threshold, ui)
    if heatmap is not None:
        from vistrain.evaluation.gradcam import write_heatmaps

        with ui.stage("heat maps", sum(1 for r in rows if r["label"])) as advance:
            write_heatmaps(run.predictor, rows, Path(heatmap), advance)
    if csv_path is not None:
        write_predictions_csv(rows, Path(csv_path), top_k)
    if into is not None:
        sort_into(rows, Path(into), run.classes)
    return rows

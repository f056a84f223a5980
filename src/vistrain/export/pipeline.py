"""``vistrain export``: a run folder -> a self-describing ONNX export folder, verified.

Verification runs on the run's own validation images (``split.csv``): ONNX Runtime's logits against
PyTorch's (largest absolute difference) and the accuracy of every file written. An int8 file that
loses more than ``max_accuracy_drop`` points of accuracy, on those images or on those and a sample of
training images together, is not kept, and the export fails loudly.

The files are built in a temporary sibling folder and swapped in only once complete and verified: an
export that fails (or is interrupted) leaves the earlier one as it was, and never a half-written one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vistrain import __version__
from vistrain.data.images import ImageError, load_rgb
from vistrain.data.split import split_rows
from vistrain.data.transforms import (
    Preprocessing,
    normalize,
    normalize_array,
    to_model_pixels,
)
from vistrain.export.card import (
    CARD_FILE,
    MARKER,
    OWN_CARD_FILE,
    REFUSED_NOTE,
    SCRIPT_FILE,
    write_card,
)
from vistrain.export.folder import (
    ExportError,
    make_parents,
    remove_empty,
    swap_in,
)
from vistrain.export.graph import export_graph
from vistrain.export.quantize import METHODS, prepare, quantize, single_image_latency_ms
from vistrain.familiarity import FAMILIAR_FILE, Familiarity, pooled
from vistrain.memory import inference_batch_size
from vistrain.models.classifier import (
    WEIGHTS_FILE,
    current_umask,
    load_model,
    permit_as_umask,
)
from vistrain.models.registry import ensemble_members
from vistrain.progress import Reporter, SilentReporter
from vistrain.runtime.bundle import (
    EXPORT_FILE,
    HEAD_FILE,
    ExportFolderError,
    ExportInfo,
    read_export,
    weights_digest,
)

FP32_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
# Every file an export writes (README.md only when it carries the card's marker); anything else in an
# earlier export folder is the user's and moves into the new one.
WRITTEN = {FP32_FILE, INT8_FILE, HEAD_FILE, FAMILIAR_FILE, EXPORT_FILE, SCRIPT_FILE, OWN_CARD_FILE,
           ".prepared.onnx", *(f".{m}.int8.onnx" for m in METHODS)}


class Int8Refused(ExportError):
    """The fp32 export was written and verified, but the int8 model asked for lost too much accuracy and
    was not kept. ``result`` is the fp32 export, so a caller can still report and use it."""

    def __init__(self, message: str, result: ExportResult):
        super().__init__(message)
        self.result = result


@dataclass
class ExportConfig:
    out: Path | None = None  # default: RUN/export
    int8: bool = False
    # static (calibrated) measured better than dynamic on climbing in accuracy and ~8x in speed;
    # auto measures both and keeps the more accurate (then the faster).
    int8_method: str = "static"
    max_accuracy_drop: float = 1.0  # percentage points of accuracy int8 may lose (see _int8_verdict)
    calibration_images: int = 100  # training images for static quantization's activation ranges
    max_logit_diff: float = 1e-3  # fp32 ONNX vs PyTorch, largest absolute difference allowed
    seed: int = 0

    def __post_init__(self) -> None:
        if self.int8_method not in ("auto", *METHODS):
            raise ExportError(f"int8 method {self.int8_method!r} is not one of auto, {', '.join(METHODS)}")
        if not 0 <= self.max_accuracy_drop <= 100:
            raise ExportError(f"maximum accuracy drop {self.max_accuracy_drop} must be between 0 and 100 points")
        if self.calibration_images < 1:
            raise ExportError(f"calibration images {self.calibration_images} must be at least 1")


@dataclass
class ExportResult:
    folder: Path
    info: ExportInfo
    notes: list[str] = field(default_factory=list)
    card: Path | None = None  # the model card (README.md), beside predict_onnx.py


def export_run(run_dir: Path | str, cfg: ExportConfig | None = None, reporter: Reporter | None = None) -> ExportResult:
    cfg = cfg or ExportConfig()
    ui = reporter or SilentReporter()
    run_dir = Path(run_dir)
    model, mcfg = load_model(run_dir)
    out = Path(cfg.out) if cfg.out else run_dir / "export"
    # A linked export folder is replaced where it lies, so the link keeps pointing at it.
    target = out.resolve() if out.is_symlink() else out
    if target.exists() and not target.is_dir():
        raise ExportError(f"{out}: exists and is not a folder; export needs a folder there")
    made: list[Path] = []
    try:
        made = make_parents(target.parent)
        work = Path(tempfile.mkdtemp(prefix=f"{target.name}.tmp-", dir=target.parent))
    except OSError as exc:
        remove_empty(made)
        raise ExportError(f"{target.parent}: cannot write the export next to {out.name} ({exc})") from exc
    try:
        # mkdtemp makes an owner-only folder; an export is read by servers of other users too.
        os.chmod(work, stat.S_IMODE(target.stat().st_mode) if target.is_dir() else 0o777 & ~current_umask())
        result, rejected = _build(run_dir, out, target, work, model, mcfg, cfg, ui)
        _check_complete(work, result.info)
        swap_in(work, target, out, _written_by_export)
    except BaseException:  # Ctrl-C included: the earlier export stays as it was
        shutil.rmtree(work, ignore_errors=True)
        remove_empty(made)
        raise
    if rejected:
        raise Int8Refused(rejected, result)
    return result


def _build(run_dir: Path, out: Path, target: Path, work: Path, model, mcfg, cfg: ExportConfig,
           ui: Reporter) -> tuple[ExportResult, str | None]:
    """Every file of the export, written into ``work`` and verified; ``out`` is where they will be
    (``target`` the real folder, when ``out`` is a link), for messages and the card."""
    prep = mcfg.preprocessing
    notes: list[str] = []
    if (target / INT8_FILE).is_file() and not cfg.int8:
        # Kept, it would be served by default with figures of whatever export last wrote export.json.
        notes.append(f"the earlier export's {INT8_FILE} was removed: this export is fp32 only "
                     f"(export with --int8 to make one again)")

    valid, train = split_images(run_dir, mcfg.classes, mcfg.extra, notes)
    x_valid, y_valid = decode(valid, prep, ui, "decode valid", notes)
    if not len(y_valid):
        raise ExportError(f"{run_dir}: none of the {len(valid)} validation images listed in split.csv could be "
                          f"read to verify the export with ({notes[-1] if notes else 'no reason given'})")
    torch_logits = _torch_logits(model, x_valid, prep)
    torch_acc = _accuracy(torch_logits, y_valid)

    with ui.stage("export onnx", 1, unit="file") as advance:
        export_graph(model, prep.size, work / FP32_FILE)
        advance(1)
    _save_head(model, work / HEAD_FILE)
    fp32_logits = ort_logits(work / FP32_FILE, x_valid, prep)
    diff = float(np.abs(fp32_logits - torch_logits).max())
    if not diff <= cfg.max_logit_diff:
        raise ExportError(f"{out / FP32_FILE}: ONNX Runtime logits differ from PyTorch's by {diff:.2e} "
                          f"(more than {cfg.max_logit_diff:.0e}) on {len(y_valid)} validation images")
    models = {"fp32": _entry(work / FP32_FILE, fp32_logits, torch_logits, y_valid, diff)}
    models["fp32"]["latency_ms_1_thread"] = round(single_image_latency_ms(work / FP32_FILE, prep.size), 2)
    default = "fp32"

    rejected: str | None = None
    if cfg.int8:
        x_cal, y_cal = _calibration_pixels(train, x_valid, y_valid, cfg, prep, ui, notes)
        # The training photos are a second check unless they are the validation photos already used.
        check = None if x_cal is x_valid else (y_cal, _torch_logits(model, x_cal, prep).argmax(1))
        int8, chosen_notes = _best_int8(work, cfg, x_cal, x_valid, y_valid, torch_logits, prep, ui, check)
        notes.extend(chosen_notes)
        rejected = _int8_verdict(int8, torch_acc, len(y_valid), cfg.max_accuracy_drop)
        if rejected:
            (work / INT8_FILE).unlink(missing_ok=True)
            if cfg.int8_method == "auto":
                rejected += f", and it was the better of {' and '.join(METHODS)}"
            notes.append(REFUSED_NOTE + rejected)  # export.json keeps why, not only the exit code
            rejected += f": int8 model not kept; the fp32 export in {out} is verified and usable"
        else:
            models["int8"] = int8
            default = "int8"

    familiar = Familiarity.load(run_dir)
    if familiar is not None:
        check_familiarity(familiar, work, models, x_valid, prep, notes)
        familiar.save(work)

    members = ensemble_members(mcfg.backbone)
    if len(members) > 1:
        served = models[default]
        notes.append(f"this model is an ensemble of {len(members)} backbones ({', '.join(members)}): every image runs "
                     f"all {len(members)} networks, {served['latency_ms_1_thread']:.0f} ms per image on 1 thread "
                     f"({default}); train with --ensemble off or one --backbone for a model about "
                     f"{len(members)}x cheaper to serve")

    info = ExportInfo(
        classes=list(mcfg.classes), preprocessing=prep, backbone=mcfg.backbone, temperature=mcfg.temperature,
        unsure_threshold=mcfg.unsure_threshold, models=models, default=default,
        extra={
            "source_run": str(run_dir.resolve()),
            "vistrain_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": _versions(),
            "validation": {"images": len(y_valid), "pytorch_accuracy": torch_acc, "notes": notes},
            "safetensors_bytes": (run_dir / WEIGHTS_FILE).stat().st_size,
            "source_weights_sha256": weights_digest(run_dir / WEIGHTS_FILE),
        },
    )
    info.write(work)
    card, _, card_notes = write_card(run_dir, work, info, final=out)
    notes.extend(card_notes)
    return ExportResult(out, info, notes, out / card.name), rejected


def _check_complete(work: Path, info: ExportInfo) -> None:
    """The folder about to replace the export reads back as one: export.json and every file it names."""
    try:
        read_export(work)
    except ExportFolderError as exc:
        raise ExportError(f"the new export did not read back: {exc}") from exc
    for name in [*(m["file"] for m in info.models.values()), HEAD_FILE, SCRIPT_FILE]:
        path = work / name
        if not path.is_file() or not path.stat().st_size:
            raise ExportError(f"{path}: missing or empty in the new export, which was not put in place")


def _written_by_export(path: Path) -> bool:
    if path.name == CARD_FILE and path.is_file():
        with contextlib.suppress(OSError), path.open(encoding="utf-8", errors="replace") as f:
            return f.read(len(MARKER)) == MARKER
        return False
    return path.name in WRITTEN and not path.is_dir()


def split_images(run_dir: Path, classes: list[str], extra: dict, notes: list[str]):
    """(path, class index) of the run's validation and training images, read from ``split.csv``
    (see :func:`vistrain.data.split.split_rows` for where relative paths are looked for). Raises
    when no validation image is left to verify an export with, saying why."""
    split_file = run_dir / "split.csv"
    if not split_file.is_file():
        raise ExportError(f"{run_dir}: no split.csv, so no validation images to verify the export with")
    out: dict[str, list] = {"valid": [], "train": []}
    missing: dict[str, list[Path]] = {"valid": [], "train": []}
    for row in split_rows(split_file, extra):
        if row.split not in out or row.label not in classes:
            continue
        if row.found is None:
            missing[row.split].append(row.listed)
            continue
        out[row.split].append((row.found, classes.index(row.label)))
    lost = missing["valid"] + missing["train"]
    if not out["valid"] and missing["valid"]:
        n = len(missing["valid"])
        # Where the photos were: the folder the missing paths share (the config's root may be relative).
        try:
            where = Path(os.path.commonpath(lost)) if len(lost) > 1 else lost[0].parent
        except ValueError:  # absolute and relative paths mixed
            where = lost[0].parent
        raise ExportError(f"{run_dir}: the {n} validation image{'s' if n > 1 else ''} listed in {split_file} "
                          f"{'are' if n > 1 else 'is'} missing (first: {missing['valid'][0]}), and export verifies "
                          f"the ONNX files on them; move the data back to {where}, or export on the machine "
                          f"that has it")
    if not out["valid"]:
        raise ExportError(f"{run_dir}: {split_file} lists no validation images to verify the export with")
    if lost:
        notes.append(f"{len(lost)} image(s) listed in {split_file} no longer exist and were left out "
                     f"(first: {lost[0]})")
    return out["valid"], out["train"]


def decode(items: list[tuple[Path, int]], prep: Preprocessing, ui: Reporter, stage: str, notes: list[str]):
    """Model pixels the way every predictor makes them (``load_rgb`` -> ``to_model_pixels``)."""
    def one(item):
        try:
            return to_model_pixels(load_rgb(item[0], min_side=prep.size), prep)
        except ImageError as exc:
            notes.append(f"left out {exc}")
            return None

    pixels, labels = [], []
    with ui.stage(stage, len(items)) as advance, ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        for (_, label), px in zip(items, pool.map(one, items)):
            advance(1)
            if px is not None:
                pixels.append(px)
                labels.append(label)
    if not pixels:
        return np.zeros((0, prep.size, prep.size, 3), np.uint8), np.zeros(0, int)
    return np.stack(pixels), np.array(labels)


@torch.inference_mode()
def _torch_logits(model, pixels: np.ndarray, prep: Preprocessing, batch: int | None = None) -> np.ndarray:
    batch = batch or inference_batch_size(prep.size)
    return np.concatenate([model(normalize(pixels[i : i + batch], prep)).float().numpy()
                           for i in range(0, len(pixels), batch)])


def ort_logits(path: Path, pixels: np.ndarray, prep: Preprocessing, batch: int | None = None,
               output: str = "logits") -> np.ndarray:
    """One output of an exported graph over ``pixels``: ``logits``, or ``features`` pooled."""
    import onnxruntime as ort

    batch = batch or inference_batch_size(prep.size)

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = os.cpu_count() or 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    outs = []
    for i in range(0, len(pixels), batch):
        y = sess.run([output], {"pixels": normalize_array(pixels[i : i + batch], prep)})[0]
        outs.append(pooled(y) if output == "features" else y)
    return np.concatenate(outs)


def check_familiarity(familiar: Familiarity, out: Path, models: dict, x_valid: np.ndarray, prep: Preprocessing,
                      notes: list[str]) -> None:
    """Each exported model's own familiarity threshold, by the run's rule on the same validation
    photos: int8 features are a little off fp32's, and the run's threshold would flag too many."""
    for variant, entry in models.items():
        sims = familiar.similarity(ort_logits(out / entry["file"], x_valid, prep, output="features"))
        refit = Familiarity.threshold_for(sims, familiar.keep)
        entry["familiar_threshold"] = round(refit, 6)
        entry["valid_familiar_at_run_threshold"] = round(float(np.mean(sims >= familiar.threshold)), 4)
        if variant == "int8" and abs(refit - familiar.threshold) > 0.02:
            notes.append(f"int8 familiarity threshold {refit:.3f} (the run's: {familiar.threshold:.3f}): "
                         f"int8 features differ from fp32's")


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean()) if len(labels) else 0.0


def _entry(path: Path, logits: np.ndarray, torch_logits: np.ndarray, labels: np.ndarray, diff: float) -> dict:
    return {
        "file": path.name,
        "bytes": path.stat().st_size,
        "valid_accuracy": _accuracy(logits, labels),
        "top1_agreement_with_pytorch": float((logits.argmax(1) == torch_logits.argmax(1)).mean()),
        "max_abs_logit_diff": diff,
    }


def _save_head(model, path: Path) -> None:
    from safetensors.numpy import save_file

    save_file({"weight": model.head.weight.detach().float().numpy().copy(),
               "bias": model.head.bias.detach().float().numpy().copy()}, str(path), metadata={"format": "vistrain-head"})
    permit_as_umask(path)


def _calibration_pixels(train, x_valid, y_valid, cfg: ExportConfig, prep, ui, notes) -> tuple[np.ndarray, np.ndarray]:
    """A seeded sample of up to ``cfg.calibration_images`` training photos, decoded, with their labels:
    static int8 takes its activation ranges from them, and every int8 model is checked on them too."""
    if not train:
        notes.append("no training images found: int8 calibrated on the validation images")
        return x_valid, y_valid
    rng = np.random.default_rng(cfg.seed)
    pick = [train[i] for i in sorted(rng.permutation(len(train))[: cfg.calibration_images])]
    x_cal, y_cal = decode(pick, prep, ui, "calibration", notes)
    return (x_cal, y_cal) if len(x_cal) else (x_valid, y_valid)


def _check_on_training_photos(int8: dict, path: Path, x: np.ndarray, y: np.ndarray, torch_answers: np.ndarray,
                              prep: Preprocessing) -> None:
    """A second, larger look: a validation set of a few dozen photos can miss the answers int8 changes,
    and these training photos show them (the model fits them, yet int8 may not)."""
    int8_answers = ort_logits(path, x, prep).argmax(1)
    agreement = {"images": len(y), "same_answer": int((torch_answers == int8_answers).sum())}
    int8["training_photos_check"] = {**agreement, "pytorch_right": int((torch_answers == y).sum()),
                                     "int8_right": int((int8_answers == y).sum())}
    if int8["method"] == "static":
        int8["calibration_agreement"] = agreement


def _right(int8: dict, n_valid: int) -> int:
    """How many of the photos it was checked on (validation, and training when checked) int8 answers right."""
    return round(int8["valid_accuracy"] * n_valid) + int8.get("training_photos_check", {}).get("int8_right", 0)


def _int8_verdict(int8: dict, torch_acc: float, n_valid: int, tolerance: float) -> str | None:
    """Why int8 is refused, or None. It may lose at most ``tolerance`` points of accuracy on the
    validation photos, and at most as many on all the photos it was checked on (validation and the
    training photos): on a validation set of 18 photos a single changed answer is 5.6 points, or
    none at all, and the training photos are what tells those apart."""
    points = f"(tolerance {tolerance:g} point{'' if tolerance == 1 else 's'})"
    drop = (torch_acc - int8["valid_accuracy"]) * 100
    if drop > tolerance:
        return (f"int8 ({int8['method']}) validation accuracy {int8['valid_accuracy']:.1%} is {drop:.1f} points "
                f"below PyTorch's {torch_acc:.1%} {points}")
    t = int8.get("training_photos_check")
    if not t:
        return None
    n = n_valid + t["images"]
    torch_right = round(torch_acc * n_valid) + t["pytorch_right"]
    int8_right = _right(int8, n_valid)
    drop = (torch_right - int8_right) / n * 100
    int8["checked_accuracy_drop_points"] = round(drop, 3)
    if drop > tolerance:
        return (f"int8 ({int8['method']}) is right on {int8_right} of the {n} photos it was checked on ({n_valid} "
                f"validation, {t['images']} training), PyTorch on {torch_right}: {drop:.1f} points below "
                f"{points}")
    return None


def _best_int8(out: Path, cfg: ExportConfig, x_cal, x_valid, y_valid, torch_logits, prep, ui,
              check: tuple[np.ndarray, np.ndarray] | None) -> tuple[dict, list[str]]:
    """Quantize with each method asked for, measure accuracy and latency, keep the better as INT8_FILE.
    ``check``: the labels of ``x_cal`` and PyTorch's answers on them, when they are training photos
    (see _check_on_training_photos).

    Better: more right answers on all the photos checked; on a tie, lower single-image latency.
    """
    methods = METHODS if cfg.int8_method == "auto" else (cfg.int8_method,)
    prepared = prepare(out / FP32_FILE, out / ".prepared.onnx")
    candidates = []
    try:
        with ui.stage("int8", len(methods), unit="model") as advance:
            for method in methods:
                path = quantize(prepared, out / f".{method}.int8.onnx", method, x_cal, prep)
                logits = ort_logits(path, x_valid, prep)
                entry = _entry(path, logits, torch_logits, y_valid, float(np.abs(logits - torch_logits).max()))
                entry.update(method=method, latency_ms_1_thread=round(single_image_latency_ms(path, prep.size), 2),
                             calibration_images=len(x_cal) if method == "static" else 0)
                if check is not None:
                    _check_on_training_photos(entry, path, x_cal, *check, prep)
                candidates.append((path, entry))
                advance(1)
        best_path, best = max(candidates, key=lambda c: (_right(c[1], len(y_valid)), -c[1]["latency_ms_1_thread"]))
        os.replace(best_path, out / INT8_FILE)
        best["file"] = INT8_FILE
    finally:
        for p in [prepared, *(c[0] for c in candidates)]:
            p.unlink(missing_ok=True)
    if len(candidates) == 1:
        return best, []  # the summary already gives its accuracy, latency and size
    notes = [f"int8 {e['method']}: validation accuracy {e['valid_accuracy']:.1%}, "
             + (f"right on {e['training_photos_check']['int8_right']} of {e['training_photos_check']['images']} "
                "training photos, " if "training_photos_check" in e else "")
             + f"{e['latency_ms_1_thread']:.1f} ms per image on 1 thread, {e['bytes'] / 1e6:.1f} MB"
             for _, e in candidates]
    return best, [*notes, f"chose int8 {best['method']}"]


def _versions() -> dict:
    import onnx
    import onnxruntime

    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def describe(result: ExportResult) -> list[str]:
    """A short human summary: files, sizes, accuracies against PyTorch's."""
    info = result.info
    v = info.extra["validation"]
    lines = [f"Exported to {result.folder} ({len(info.classes)} classes, input {info.preprocessing.size} px)",
             (f"PyTorch: {v['pytorch_accuracy']:.1%} on {v['images']} validation images, "
              f"{info.extra['safetensors_bytes'] / 1e6:.1f} MB safetensors")]
    for name, m in info.models.items():
        lines.append(f"ONNX {name}{' (' + m['method'] + ')' if 'method' in m else ''}: {m['file']}, "
                     f"{m['bytes'] / 1e6:.1f} MB, {m['latency_ms_1_thread']:.1f} ms per image on 1 thread, "
                     f"validation accuracy {m['valid_accuracy']:.1%}, "
                     f"top-1 agreement with PyTorch {m['top1_agreement_with_pytorch']:.1%}, "
                     f"max |logit diff| {m['max_abs_logit_diff']:.2e}")
    if "int8" in info.models:
        m = info.models["int8"]
        lines.append(f"int8 is {info.models['fp32']['bytes'] / m['bytes']:.1f}x smaller; accuracy change "
                     f"{(m['valid_accuracy'] - v['pytorch_accuracy']) * 100:+.1f} points; served by default")
        cal = m.get("training_photos_check")
        if cal:
            how = "calibrated" if m.get("method") == "static" else "checked"
            lines.append(f"int8 gives PyTorch's answer on {cal['same_answer']} of the {cal['images']} training photos "
                         f"it was {how} on ({cal['same_answer'] / cal['images']:.1%}); "
                         f"--variant fp32 (predict, serve) runs the float model")
    if result.card is not None:
        lines.append(f"Model card: {result.card.name}; {SCRIPT_FILE} runs the model with Pillow, numpy and "
                     f"ONNX Runtime alone")
    return lines

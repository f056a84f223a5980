"""The export folder's model card, ``README.md``, and its stand-alone script, ``predict_onnx.py``.

Whoever is handed the folder learns from the card what the model answers, how well (with the
uncertainty a small validation set leaves), how it was made and where not to trust it, and can run
it with Pillow, numpy and ONNX Runtime alone. Every figure is read from the run's and the export's
own JSON files, so the card cannot drift from the model it describes.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from vistrain.data.findings import NAMES
from vistrain.evaluation.calibration import set_aside
from vistrain.evaluation.intervals import accuracy_interval
from vistrain.models.registry import BackboneError, ensemble_members, get_backbone
from vistrain.runtime.bundle import ExportInfo, weights_digest

REFUSED_NOTE = "int8 refused: "  # how export.json's notes say why there is no int8 file

CARD_FILE = "README.md"
OWN_CARD_FILE = "README.vistrain.md"  # where the card goes when README.md is the user's
SCRIPT_FILE = "predict_onnx.py"
# The card's first line: a README.md without it is the user's own and is never overwritten.
MARKER = "<!-- written by vistrain export, which rewrites this file: copy it elsewhere to keep your edits -->"
_RESIZE = {
    "crop": "shorter side resized to {s} px ({i}), then the centre {s} x {s} square",
    "pad": "longer side resized to {s} px ({i}), centred on a {s} x {s} square of the mean colour",
    "squish": "resized to {s} x {s} px ({i}), aspect ratio not kept",
}


def write_card(run_dir: Path, out: Path, info: ExportInfo, final: Path | None = None) -> tuple[Path, Path, list[str]]:
    """Write the stand-alone script and the model card into ``out``; returns their paths and notes.
    ``final``: the folder ``out`` will replace (export builds in a temporary one), whose README.md
    decides where the card goes; by default ``out`` itself."""
    notes: list[str] = []
    final = out if final is None else Path(final)
    script = out / SCRIPT_FILE
    script.write_text((Path(__file__).parent / "standalone.py").read_text(encoding="utf-8"), encoding="utf-8")
    script.chmod(0o755)  # ./predict_onnx.py works too
    card = out / CARD_FILE
    theirs = final / CARD_FILE
    if theirs.exists() and not theirs.read_text(encoding="utf-8", errors="replace").startswith(MARKER):
        card = out / OWN_CARD_FILE
        notes.append(f"{theirs} is not vistrain's: the model card went to {card.name} instead")
    card.write_text(card_text(run_dir, out, info), encoding="utf-8")  # class names: any script
    return card, script, notes


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.1%}"  # None: undefined (0/0), e.g. a class with no validation images


def _threshold_pct(x: float) -> str:
    """A threshold as a percentage with the digits that keep it apart from 100% (and 0%): 0.999715
    at one decimal would read "below 100.0%", which every probability is."""
    for digits in range(1, 6):
        text = f"{x:.{digits}%}"
        if 0 < x < 1 and float(text[:-1]) in (0.0, 100.0):
            continue
        return text
    return f"{x:.6%}"


def _f1(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def _code(name: str) -> str:
    """``name`` as inline code that survives a Markdown table (a class name may hold ``|`` or a backtick)."""
    name = name.replace("|", "\\|")
    return f"`` {name} ``" if "`" in name else f"`{name}`"


def card_text(run_dir: Path, out: Path, info: ExportInfo) -> str:
    metrics = _read(run_dir / "metrics.json")
    config = _read(run_dir / "config.json")
    data = _read(run_dir / "data_report.json")
    audit = _read(run_dir / "audit.json")
    classes = info.classes
    name = run_dir.resolve().name
    lines = [MARKER, "", f"# {name}: an image classifier for {len(classes)} classes", ""]
    lines += [f"It answers one of {', '.join(_code(c) for c in classes)}"
              + (f', or "unsure" when its top probability is below {_threshold_pct(info.unsure_threshold)}.'
                 if info.unsure_threshold is not None else "."),
              "Every photo gets one of these answers, even a photo of something else (see *Limits*).", ""]
    lines += _overview(info, config, data)
    lines += _quality(info, metrics, config)
    lines += _use(info)
    lines += _data(data, audit, classes)
    lines += _made(config, metrics, run_dir)
    lines += _limits(info, metrics, data, config)
    lines += _files(out, info)
    return "\n".join(lines).rstrip() + "\n"


def _backbone_line(backbone: str, interpolation: str) -> str:
    parts = []
    for member in ensemble_members(backbone):
        try:
            spec = get_backbone(member)
        except BackboneError:
            parts.append(member)
            continue
        # An ensemble resizes once, the first member's way: say so where a member's weights expect another.
        resized = ("" if spec.interpolation == interpolation else
                   f"; its weights expect {spec.interpolation} resizing, it sees the input's {interpolation}")
        parts.append(f"{member} (ImageNet weights from the pip package `{spec.weights_package}`, {spec.license}{resized})")
    return " + ".join(parts)


def _overview(info: ExportInfo, config: dict, data: dict) -> list[str]:
    prep = info.preprocessing
    training = config.get("training", {})
    counts = data.get("counts", {})
    n_train = sum(counts.get("train", {}).values())
    stage = {"finetune": "fine-tuned", "probe": "a linear head on frozen features"}.get(config.get("stage", ""), "")
    default = info.models[info.default]
    rows = [("Network", _backbone_line(info.backbone, prep.interpolation) + (f", {stage}" if stage else "")),
            ("Input", _RESIZE[prep.resize].format(s=prep.size, i=prep.interpolation)
             + f"; RGB / 255, minus {_seq(prep.mean)}, divided by {_seq(prep.std)}"),
            ("Trained", (f"{config.get('created', '?')[:10]} by vistrain {config.get('vistrain_version', '?')}, on "
                        f"{n_train} photos from {_code(str(data.get('root', '?')))} (seed {training.get('seed', '?')})")),
            ("Default file", f"`{default['file']}` ({info.default}, {default['bytes'] / 1e6:.1f} MB)")]
    out = ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    return out + [""]


def _seq(values) -> str:
    values = [f"{v:g}" for v in values]
    return values[0] if len(set(values)) == 1 else "(" + ", ".join(values) + ")"


def _quality(info: ExportInfo, metrics: dict, config: dict) -> list[str]:
    out = ["## How well it works", "", "| images | accuracy | 95% interval | what these images did |", "|---|---|---|---|"]
    valid, test = metrics.get("valid"), metrics.get("test")
    for split, m, role in (("validation", valid, _valid_role(valid)),
                           ("test", test, "nothing else: never seen in training or in any choice")):
        if m:
            out.append(f"| {split}, {m['n']} | **{_pct(m['accuracy'])}** | {_interval(m)} | {role} |")
    out.append("")
    if valid:
        out.append(f"With {valid['n']} validation images, one image is {100 / valid['n']:.1f} points: read the interval, "
                   "not the last digit." + ("" if test else " There was no test split: `vistrain evaluate` on new "
                                            "labelled photos gives a figure that no choice has touched."))
        out += ["", "Per class, on the validation images:", "",
                "| class | precision | recall | F1 | images |", "|---|---|---|---|---|"]
        for c, pc in valid.get("per_class", {}).items():
            out.append(f"| {_code(c)} | {_pct(pc['precision'])} | {_pct(pc['recall'])} | {_f1(pc['f1'])} | {pc['support']} |")
        out.append("")
        confused = _confusions(valid)
        if confused:
            out += ["Most confused on validation: " + "; ".join(confused) + ".", ""]
    out += ["The exported files, checked against the PyTorch model on the validation images:", "",
            "| file | accuracy | same answer as PyTorch | size | ms per photo, 1 thread |", "|---|---|---|---|---|"]
    for variant, m in info.models.items():
        out.append(f"| `{m['file']}` ({variant}{', default' if variant == info.default else ''}) | "
                   f"{_pct(m['valid_accuracy'])} | {_pct(m['top1_agreement_with_pytorch'])} | "
                   f"{m['bytes'] / 1e6:.1f} MB | {m['latency_ms_1_thread']:.1f} |")
    int8 = info.models.get("int8", {})
    agreement = int8.get("training_photos_check") or int8.get("calibration_agreement")  # the latter: older exports
    if agreement:
        share = _pct(agreement["same_answer"] / agreement["images"])
        how = "calibrated" if int8.get("method", "static") == "static" else "checked"
        right = (f" It is right on {agreement['int8_right']} of them, PyTorch on {agreement['pytorch_right']}."
                 if "int8_right" in agreement else "")
        out += ["", (f"On the {agreement['images']} training photos it was {how} on, int8 gives PyTorch's "
                     f"answer for {agreement['same_answer']} ({share}).{right}")]
    refused = [n.removeprefix(REFUSED_NOTE) for n in info.extra.get("validation", {}).get("notes", [])
               if n.startswith(REFUSED_NOTE)]
    if refused:
        out += ["", f"There is no int8 file: one was made and refused, because {refused[-1]}."]
    out += [""] + _honesty(info, config)
    return out


def _interval(m: dict) -> str:
    """The accuracy's 95% interval as the train summary and `vistrain report` print it ("" without one)."""
    ci = accuracy_interval(m)
    return f"{_pct(ci[0])} – {_pct(ci[1])}" if ci else ""


def _valid_role(valid: dict | None) -> str:
    note = (valid or {}).get("note", "")
    return (note.replace(": a slightly optimistic estimate", "") + " (slightly optimistic)") if note else \
        "measured the model; no choice was made on them"


def _confusions(m: dict, top: int = 3) -> list[str]:
    classes, matrix = m.get("classes", []), m.get("confusion_matrix", [])
    pairs = [(matrix[i][j], classes[i], classes[j]) for i in range(len(matrix)) for j in range(len(matrix))
             if i != j and matrix[i][j]]
    return [f"{n} {_code(a)} taken for {_code(b)}" for n, a, b in sorted(pairs, key=lambda p: -p[0])[:top]]


def _raw_softmax_why(cal: dict) -> str:
    if not set_aside(cal):  # every validation image right: no error to fit a temperature to
        return "No temperature was fitted: every validation image was answered right, so nothing measured one."
    why = ("it did not lower the log-loss of held-out images" if cal.get("heldout_nll_raw") is not None
           else f"with {cal.get('n', '?')} validation images (fewer than 10) it could not be checked on held-out ones")
    return f"A fitted temperature ({cal['fitted_temperature']:g}) was set aside: {why}."


def _honesty(info: ExportInfo, config: dict) -> list[str]:
    cal = config.get("calibration", {})
    out = ["### Probabilities, \"unsure\" and \"unfamiliar\"", ""]
    if cal:
        kept = abs(cal.get("temperature", 1.0) - 1.0) > 1e-9
        out.append(f"- Probabilities are softmax(logits / {info.temperature:g}). "
                   + (f"The temperature was fitted on the validation images and kept because it helped held-out "
                      f"ones: expected calibration error {_pct(cal['ece_before'])} → {_pct(cal['ece_after'])}."
                      if kept else _raw_softmax_why(cal) + f" Expected calibration error {_pct(cal.get('ece_before', 0))}."))
    if info.unsure_threshold is not None:
        line = f"- \"unsure\": the top probability is below {_threshold_pct(info.unsure_threshold)}."
        if "coverage" in cal:
            line += (f" On the validation images this answered {_pct(cal['coverage'])} of them, "
                     f"{_pct(cal['precision'])} of those rightly (the target was {_pct(cal['target_precision'])}).")
        out.append(line)
    fam = config.get("familiarity")
    own = info.models[info.default].get("familiar_threshold")
    if fam:
        threshold = fam["threshold"] if own is None else own
        out.append(f"- \"unfamiliar\": `vistrain predict`, `vistrain serve` and `{SCRIPT_FILE}` compare each photo's features with "
                   f"those of {fam['neighbours']} training photos (`familiar.safetensors`) and flag a photo whose "
                   f"nearest is less similar than {threshold:.3f} ({info.default}), a similarity that "
                   f"{_pct(fam['keep'])} of the validation photos reach.")
    return out + [""]


def _use(info: ExportInfo) -> list[str]:
    size = info.preprocessing.size
    return [
        "## Use it", "",
        "```bash",
        f"python {SCRIPT_FILE} photo.jpg photos/               # needs only: pip install onnxruntime numpy pillow",
        "vistrain predict . photos/ --csv answers.csv [--into sorted/]   # no PyTorch needed",
        "vistrain evaluate . labelled_photos/                  # accuracy, per class, confusion matrix",
        "vistrain serve .                                       # web page and HTTP API at http://127.0.0.1:8000/",
        "```", "",
        "```python",
        "from vistrain.runtime import OnnxPredictor      # no PyTorch needed",
        "p = OnnxPredictor.from_folder(\".\")",
        "p.predict_paths([\"photo.jpg\"])[0].probabilities  # in the order of export.json's classes",
        "```", "",
        (f"`{SCRIPT_FILE}` is vistrain's own preprocessing, step for step (tested to give the same input "
        "bit for bit). In any other runtime, the model's input `pixels` is N x 3 x "
        f"{size} x {size} float32 (see *Input* above); its outputs are `logits` (N x {len(info.classes)}, "
        "in the order of `classes` in `export.json`) and `features` (the last convolutional stage, for heat maps)."),
        "",
    ]


def _data(data: dict, audit: dict, classes: list[str]) -> list[str]:
    counts = data.get("counts", {})
    splits = [s for s in ("train", "valid", "test") if counts.get(s)]
    if not splits:
        return []
    out = ["## The photos it learned from", "", f"From {_code(str(data.get('root', '?')))} ({data.get('layout', '?')}).", "",
           "| class | " + " | ".join(splits) + " |", "|---" * (len(splits) + 1) + "|"]
    for c in classes:
        out.append(f"| {_code(c)} | " + " | ".join(str(counts[s].get(c, 0)) for s in splits) + " |")
    out.append("")
    if data.get("n_skipped"):
        out += [(f"{data['n_skipped']} files could not be read and were left out (`data_report.json` of the run "
                "lists them)."), ""]
    found = audit.get("summary", {})
    if found:
        out += ["The data check found: " + ", ".join(_finding(k, n) for k, n in found.items())
                + " (`vistrain audit` names the files).", ""]
    return out


def _finding(kind: str, n: int) -> str:
    """``n`` findings of ``kind`` as the audit itself names them: duplicates come in groups."""
    one, many = NAMES.get(kind, (kind.replace("_", " "),) * 2)
    return f"{n} {one if n == 1 else many}"


def _made(config: dict, metrics: dict, run_dir: Path) -> list[str]:
    t = config.get("training", {})
    out = ["## How it was made", ""]
    probe = metrics.get("probe_valid_accuracy")
    epochs = _epochs(run_dir / "history.csv")
    if probe is not None:
        line = f"- A linear head on the frozen network's features: {_pct(probe)} on validation."
        if epochs:
            line += f" Then {epochs} epochs of fine-tuning: {_pct(metrics.get('finetune_best_valid_accuracy', 0))}."
        kept = {"finetune": "the fine-tuned network", "probe": "the linear head"}.get(metrics.get("stage", ""))
        out.append(line + (f" Kept: {kept}." if kept else ""))
    if t:
        out.append(f"- Settings: batch {t.get('batch_size')}, learning rate {t.get('lr')}, {t.get('schedule')} schedule, "
                   f"weight decay {t.get('weight_decay')}, label smoothing {t.get('label_smoothing')}, "
                   f"class balance {t.get('balance')}, seed {t.get('seed')}; `train_config.yaml` of the run repeats it.")
    if metrics.get("seconds") is not None:
        out.append(_took(metrics, t.get("resume", False)))
    out += [f"- {n}" for n in metrics.get("notes", [])]
    return out + [""]


def _seconds(s: float) -> str:
    return f"{s:.0f} s" if s >= 10 else f"{s:.1f} s"


def _took(metrics: dict, resumed: bool) -> str:
    """How long training took: a resumed run's every session (``total_seconds``) when metrics.json
    has them, else its last one (``seconds``, runs from before they were recorded)."""
    last = _seconds(metrics["seconds"])
    device = "the CPU" if metrics.get("device") == "cpu" else metrics.get("device", "?")
    if metrics.get("total_seconds") is not None:  # each session may have run on another device
        n = len(metrics.get("session_seconds", [])) or "several"
        return (f"- Training took {_seconds(metrics['total_seconds'])} in all, over {n} sessions (interrupted and "
                f"resumed); the last session took {last} on {device}.")
    took = "The last session (a resumed run) took" if resumed else "The run took"
    return f"- {took} {last} on {device}."


def _epochs(history: Path) -> int:
    try:
        with history.open() as f:
            return sum(1 for _ in csv.DictReader(f))
    except OSError:
        return 0


def _limits(info: ExportInfo, metrics: dict, data: dict, config: dict) -> list[str]:
    out = ["## Limits", "",
           (f"- It knows only its {len(info.classes)} classes. A photo of anything else still gets one of them, often "
           "with a high probability. The unfamiliar check catches photos unlike every training photo, not a new "
           "kind of thing that looks like a trained one."),
           (f"- Its figures come from photos of the same collection as its training photos ({_code(str(data.get('root', '?')))}). "
           "Photos from another camera, place, season or source may fare worse: check it on labelled photos from "
           "where it will be used (`vistrain evaluate . FOLDER`).")]
    per_class = metrics.get("valid", {}).get("per_class", {})
    measured = [c for c in per_class if per_class[c]["f1"] is not None]  # a class with no validation images has none
    if len({_f1(per_class[c]["f1"]) for c in measured}) == 1 and len(measured) > 1:
        # One class named "weakest" among equals would single it out for nothing.
        every = "Every class" if len(measured) == len(per_class) else "Every class with validation images"
        out.append(f"- {every} scored F1 {_f1(per_class[measured[0]]['f1'])} on validation "
                   f"({sum(per_class[c]['support'] for c in measured)} images): none is weaker than another there.")
    elif measured:
        weakest = min(measured, key=lambda c: per_class[c]["f1"])
        pc = per_class[weakest]
        n_train = data.get("counts", {}).get("train", {}).get(weakest)
        out.append(f"- Its weakest class on validation is {_code(weakest)} (F1 {pc['f1']:.2f}, on {pc['support']} "
                   f"images{f'; {n_train} training photos' if n_train else ''}).")
    if len(ensemble_members(info.backbone)) > 1:
        out.append(f"- It runs {len(ensemble_members(info.backbone))} networks per photo (an ensemble).")
    return out + [""]


def _files(out_dir: Path, info: ExportInfo) -> list[str]:
    names = [m["file"] for m in info.models.values()] + ["head.safetensors", "familiar.safetensors", "export.json",
                                                         SCRIPT_FILE]
    rows = ["## Files", "", "| file | bytes | SHA-256 |", "|---|---|---|"]
    for name in names:
        path = out_dir / name
        if path.is_file():
            rows.append(f"| `{name}` | {path.stat().st_size:,} | `{weights_digest(path)}` |")
    src = info.extra.get("source_weights_sha256")
    if src:
        rows += ["", f"Exported from the run's `model.safetensors` with SHA-256 `{src}`."]
    return rows

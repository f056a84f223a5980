"""``vistrain predict``."""

from __future__ import annotations

import json
from pathlib import Path

from vistrain.commands import add_device_flag, add_variant_flag, export_folder

NAME = "predict"
ORDER = 30


def register(sub) -> None:
    pr = sub.add_parser(NAME, help="classify image files and folders")
    pr.add_argument("run", type=Path, help="run folder, or an export folder (ONNX Runtime, no PyTorch needed)")
    pr.add_argument("inputs", nargs="+", type=Path, help="image files and/or folders (searched recursively)")
    pr.add_argument("--top-k", type=int, default=3, help="classes shown per photo, best first (default 3)")
    pr.add_argument("--csv", type=Path, help="write predictions to this CSV file")
    pr.add_argument("--into", type=Path, help="copy each image into DIR/<predicted class>/ (or DIR/unsure/, or DIR/unfamiliar/ "
                    "when it is unlike the training photos)")
    pr.add_argument("--unsure", type=float, metavar="P",
                    help="answer 'unsure' when the top probability is below P (default: the run's threshold; 0: never)")
    pr.add_argument("--tta", action="store_true", help="average each image with its mirror image (2x the time)")
    pr.add_argument("--heatmap", type=Path, metavar="DIR", help="write a Grad-CAM heat map of each answer into DIR")
    pr.add_argument("--json", action="store_true", help="print predictions as JSON")
    add_device_flag(pr, "the model runs")
    add_variant_flag(pr)


def run(args, console, reporter) -> int:
    from vistrain.evaluation.render import predictions_table
    from vistrain.prediction import check_answer_options

    check_answer_options(args.top_k, args.unsure, ("--top-k", "--unsure"))
    export = export_folder(args, console)
    if export is not None:
        from vistrain.runtime.files import predict_export

        rows = predict_export(export, args.inputs, top_k=args.top_k, unsure=args.unsure, csv_path=args.csv,
                              into=args.into, reporter=reporter, variant=args.variant, heatmap=args.heatmap,
                              tta=args.tta)
    else:
        from vistrain.api import predict

        rows = predict(args.run, args.inputs, top_k=args.top_k, unsure=args.unsure, csv_path=args.csv,
                       into=args.into, reporter=reporter, tta=args.tta, heatmap=args.heatmap, device=args.device)
    classes, stored_threshold = _answered_by(args.run, export)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        top_k = min(args.top_k, max((len(r["top"]) for r in rows), default=1))
        # With the answers going to a CSV or to folders, thousands of rows on screen are noise: the
        # first few show what the answers look like, the per-class counts say the rest.
        shown = rows[:TABLE_ROWS] if (args.csv or args.into) and len(rows) > TABLE_ROWS + 5 else rows
        console.print(predictions_table(shown, top_k, width=console.width))
        if len(shown) < len(rows):
            console.print(f"… {len(rows) - len(shown)} more row(s): all {len(rows)} are in "
                          + (f"{args.csv}" if args.csv else f"{args.into}/"), highlight=False, markup=False)
        if len(rows) > 1:
            console.print(f"answers: {answer_counts(rows, classes)}", highlight=False, markup=False)
    failed = sum(1 for r in rows if r["error"])
    unsure = sum(1 for r in rows if r["unsure"])
    unfamiliar = sum(1 for r in rows if r.get("familiar") is False)
    console.print(f"{len(rows)} file(s): {len(rows) - failed} classified ({unsure} unsure"
                  + (f", {unfamiliar} unlike the training photos" if unfamiliar else "") + f"), {failed} failed"
                  + (f"; CSV written to {args.csv}" if args.csv else "")
                  + (f"; copies sorted into {args.into}/" if args.into else "")
                  + (f"; heat maps in {args.heatmap}/" if args.heatmap else ""), highlight=False, markup=False)
    strict = mostly_unsure(rows, stored_threshold) if args.unsure is None else None  # a P typed is the user's own
    if strict:
        console.print(strict, highlight=False, markup=False)
    hint = faster_export(args.run) if export is None and not _on_gpu(args.device) else None
    if hint:
        console.print(hint, highlight=False, markup=False)
    return 1 if failed else 0  # as cp does (and predict_onnx.py): a script sees that a file was not answered


def _answered_by(run: Path, export: Path | None) -> tuple[list[str], float | None]:
    """The classes and the stored 'unsure' threshold of the model that answered, from its description
    (config.json, or export.json): the predictor that read them is not the command's to keep."""
    if export is not None:
        from vistrain.runtime.bundle import EXPORT_FILE, ExportInfo, find_export

        info = ExportInfo.from_dict(json.loads((find_export(export) / EXPORT_FILE).read_text()))
        return info.classes, info.unsure_threshold
    from vistrain.models.classifier import read_model_config

    config = read_model_config(run)
    return config.classes, config.unsure_threshold


MOSTLY_UNSURE_FROM = 5  # fewer answers say little about a threshold


def mostly_unsure(rows: list[dict], threshold: float | None) -> str | None:
    """A line when the run's own threshold leaves more than half of the answers 'unsure', and how to
    change it: set on a small validation set, it can climb so high (0.9868 on 30 digits) that every
    answer is 'unsure'. None otherwise."""
    answered = [r for r in rows if r["label"] is not None]
    unsure = sum(1 for r in answered if r["unsure"])
    if threshold is None or len(answered) < MOSTLY_UNSURE_FROM or unsure * 2 <= len(answered):
        return None
    return (f"{unsure} of the {len(answered)} answers are 'unsure': below the run's threshold {threshold:g}, set on its "
            f"validation images; --unsure P takes another (lower: more answers, less precise), --unsure 0 turns it off")


def _on_gpu(device: str) -> bool:
    import torch

    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())


def faster_export(run: Path) -> str | None:
    """A pointer to the run's own ONNX export, when it is of the current model: PyTorch on a run
    folder is the slow way to predict on a CPU (about 2x ONNX Runtime's fp32 time per photo, plus
    PyTorch's import), yet the run's model is not switched for its export behind the user's back."""
    from vistrain.runtime.bundle import ExportFolderError, read_export
    from vistrain.runtime.files import is_export_folder

    folder = Path(run) / "export"
    if not is_export_folder(folder):
        return None
    try:
        _, info = read_export(folder)  # refuses an export of an earlier model of this run
    except ExportFolderError:
        return None
    same = " --variant fp32" if info.default != "fp32" else ""
    return (f"tip: {folder} is an ONNX export of this model; `vistrain predict {folder}{same} …` gives the same "
            f"answers (to float rounding) faster, with ONNX Runtime")


TABLE_ROWS = 20  # rows shown when the answers also go to --csv or --into


def answer_counts(rows: list[dict], classes: list[str], most: int = 10) -> str:
    """``dress 120, hat 64, …, unfamiliar 2, unsure 7, failed 1``: classes by count (the ``most``
    largest), then the flags, each image counted once where ``--into`` would copy it. A flag that is
    also the name of one of ``classes`` is named as ``--into`` names its folder, ``unsure (vistrain)``."""
    from vistrain.prediction import answer_kind, flag_folder

    counts: dict[str, int] = {}
    flags = {"unfamiliar": 0, "unsure": 0, "failed": 0}
    for r in rows:
        kind = answer_kind(r)
        if kind == "class":
            counts[r["label"]] = counts.get(r["label"], 0) + 1
        else:
            flags[kind] += 1
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    parts = [f"{c} {n}" for c, n in ranked[:most]]
    if len(ranked) > most:
        parts.append(f"{len(ranked) - most} more classes {sum(n for _, n in ranked[most:])}")
    return ", ".join(parts + [f"{flag_folder(flag, classes)} {n}" for flag, n in flags.items() if n])

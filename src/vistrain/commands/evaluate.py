"""``vistrain evaluate``."""

from __future__ import annotations

import json
from pathlib import Path

from rich.markup import escape

from vistrain.commands import (
    LABELLED,
    add_data_flags,
    add_device_flag,
    add_variant_flag,
    cache_dir,
    export_folder,
)

NAME = "evaluate"
ORDER = 20


def register(sub) -> None:
    e = sub.add_parser(NAME, help="metrics of a trained model on a labelled folder")
    e.add_argument("run", type=Path, help="run folder, or an export folder (ONNX Runtime, no PyTorch needed)")
    e.add_argument("data", type=Path, help=f"labelled images: {LABELLED}")
    e.add_argument("--json", action="store_true", help="print the metrics as JSON")
    e.add_argument("--tta", action="store_true", help="average each image with its mirror image; reports the gain")
    add_device_flag(e, "the model runs")
    add_variant_flag(e)
    add_data_flags(e)


def run(args, console, reporter) -> int:
    from vistrain.evaluation.labelled import describe_unknown
    from vistrain.evaluation.render import ci_text, confusion_table, per_class_table
    from vistrain.evaluation.seen import describe_overlap
    from vistrain.familiarity import describe_unfamiliar

    export = export_folder(args, console)
    if export is not None:
        from vistrain.runtime.files import evaluate_export

        m = evaluate_export(export, args.data, args.label_from_name, reporter=reporter, cache_dir=cache_dir(args),
                            variant=args.variant, tta=args.tta)
    else:
        from vistrain.api import evaluate

        m = evaluate(args.run, args.data, args.label_from_name, reporter=reporter, cache_dir=cache_dir(args),
                     tta=args.tta, device=args.device)
    if args.json:
        print(json.dumps(m, indent=2))
        return 0
    for note in m["notes"]:
        console.print(f"note: {note}", markup=False)
    for s in m["skipped"]:
        console.print(f"[yellow]skipped[/] {escape(s['path'])}: {escape(s['reason'])}")
    console.print(per_class_table(m, f"{args.data}: per class"))
    console.print(confusion_table(m, width=console.width, full_at="the same command with --json"))
    console.print(f"[bold]accuracy {m['accuracy']:.1%}[/] ({m['n'] - m['errors']} of {m['n']} right{ci_text(m)})")
    unknown = describe_unknown(m)
    if unknown:
        console.print(f"[yellow]note: {escape(unknown)}[/]")
    if "overlap_with_run" in m:
        run = m["model"]["source_run"] if "model" in m else args.run  # an export's: the run it came from
        said = describe_overlap(m["overlap_with_run"], m["n"], f"{run}/split.csv")
        console.print(f"[yellow]{escape(said)}[/]")
    odd = describe_unfamiliar(m.get("unfamiliar"), m["n"])
    if odd:
        console.print(f"[magenta]{escape(odd)}[/]")
    if "tta" in m:
        t = m["tta"]
        console.print(f"test-time augmentation (mirror averaging): {t['accuracy_plain']:.1%} -> {t['accuracy_tta']:.1%} "
                      f"({t['gain'] * 100:+.1f} points)")
    return 0

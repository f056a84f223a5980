"""The ``vistrain`` command: each sub-command parses flags, calls one library function, prints a report."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vistrain import __version__


def _add_data_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--label-from-name", metavar="REGEX",
                   help="read labels from file names (flat folders): the first group, e.g. '(.+)_\\d+'")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="where scan results are cached (default: $VISTRAIN_CACHE_DIR or ~/.cache/vistrain)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the scan cache")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vistrain", description="Train, evaluate and use image classifiers from folders of photos, on a CPU.")
    parser.add_argument("--version", action="version", version=f"vistrain {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a classifier on a folder of photos")
    t.add_argument("data", type=Path, help="class folders, train/valid(/test) folders, or a CSV of path,label")
    t.add_argument("--out", type=Path, default=Path("runs/latest"), help="run folder to write (default runs/latest)")
    t.add_argument("--backbone", default="efficientnet_lite0",
                   help="efficientnet_lite0 (default), efficientnet_lite1, efficientnet_lite2, mobilenet_v2")
    t.add_argument("--mode", default="auto", choices=["auto", "probe", "finetune"],
                   help="probe: frozen features + linear head; finetune: whole network; auto: both, keep the better")
    t.add_argument("--epochs", type=int, default=8, help="most fine-tuning epochs (default 8)")
    t.add_argument("--time-budget", type=float, default=600.0, metavar="SECONDS",
                   help="wall-clock budget for the whole run; fine-tuning epochs are planned to fit (default 600)")
    t.add_argument("--no-time-budget", action="store_true", help="no time limit: train --epochs epochs")
    t.add_argument("--image-size", type=int, default=None, help="input size in pixels (default: from the photos' sizes)")
    t.add_argument("--resize", default="crop", choices=["crop", "pad", "squish"],
                   help="how non-square photos become square (default crop)")
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float, default=1e-4, help="head learning rate for fine-tuning (default 1e-4)")
    t.add_argument("--label-smoothing", type=float, default=0.0, help="label smoothing while fine-tuning (default 0)")
    t.add_argument("--valid-fraction", type=float, default=0.2, help="share held out when vistrain splits (0.2)")
    t.add_argument("--seed", type=int, default=0, help="fixes the split and the training (default 0)")
    t.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    _add_data_flags(t)

    e = sub.add_parser("evaluate", help="metrics of a trained model on a labelled folder")
    e.add_argument("run", type=Path, help="run folder")
    e.add_argument("data", type=Path, help="labelled images: class folders, flat folder with --label-from-name, or CSV")
    e.add_argument("--json", action="store_true", help="print the metrics as JSON")
    _add_data_flags(e)

    pr = sub.add_parser("predict", help="classify image files and folders")
    pr.add_argument("run", type=Path, help="run folder")
    pr.add_argument("inputs", nargs="+", type=Path, help="image files and/or folders (searched recursively)")
    pr.add_argument("--top-k", type=int, default=3)
    pr.add_argument("--csv", type=Path, help="write predictions to this CSV file")
    pr.add_argument("--into", type=Path, help="copy each image into DIR/<predicted class>/ (or DIR/unsure/)")
    pr.add_argument("--unsure", type=float, metavar="P", help="answer 'unsure' when the top probability is below P")
    pr.add_argument("--json", action="store_true", help="print predictions as JSON")
    return parser


def _cache_dir(args) -> Path | bool | None:
    return False if args.no_cache else args.cache_dir


def cmd_train(args, console, reporter) -> int:
    from vistrain.api import train
    from vistrain.evaluation.render import confusion_table, per_class_table, top_confusions, worst_classes

    run = train(
        args.data, out=args.out, reporter=reporter, label_from_name=args.label_from_name,
        valid_fraction=args.valid_fraction, cache_dir=_cache_dir(args),
        backbone=args.backbone, mode=args.mode, epochs=args.epochs,
        time_budget=None if args.no_time_budget else args.time_budget, image_size=args.image_size,
        resize=args.resize, batch_size=args.batch_size, lr=args.lr, label_smoothing=args.label_smoothing,
        seed=args.seed, resume=args.resume,
    )
    m, res = run.metrics, run.result
    console.print()
    console.print(per_class_table(m["valid"], "Validation, per class"))
    console.print(confusion_table(m["valid"]))
    kept = "fine-tuned network" if res.stage == "finetune" else "linear probe on frozen features"
    console.print(f"\n[bold green]Done[/] in {res.seconds:.0f} s. Kept: {kept}.")
    console.print(f"  validation accuracy {m['valid']['accuracy']:.1%} ({m['valid']['errors']} of {m['valid']['n']} wrong)"
                  f"; linear probe alone {res.probe_accuracy:.1%}")
    if "test" in m:
        console.print(f"  test accuracy {m['test']['accuracy']:.1%} ({m['test']['n'] - m['test']['errors']} of {m['test']['n']} right)")
    for note in res.notes:
        console.print(f"  note: {note}")
    weak = worst_classes(m["valid"])
    if weak:
        console.print(f"  weakest classes: {', '.join(weak)}")
    for a, b, n in top_confusions(m["valid"]):
        console.print(f"  {n} × actual {a} predicted as {b}")
    console.print(f"  run saved in {run.path}/ (model.safetensors, config.json, metrics.json, history.csv, split.csv)")
    console.print(f"  next: vistrain predict {run.path} NEW_PHOTOS/ --csv predictions.csv")
    return 0


def cmd_evaluate(args, console, reporter) -> int:
    from vistrain.api import evaluate
    from vistrain.evaluation.render import confusion_table, per_class_table

    m = evaluate(args.run, args.data, args.label_from_name, reporter=reporter, cache_dir=_cache_dir(args))
    if args.json:
        print(json.dumps(m, indent=2))
        return 0
    for note in m["notes"]:
        console.print(f"note: {note}")
    for s in m["skipped"]:
        console.print(f"[yellow]skipped[/] {s['path']}: {s['reason']}")
    console.print(per_class_table(m, f"{args.data}: per class"))
    console.print(confusion_table(m))
    console.print(f"[bold]accuracy {m['accuracy']:.1%}[/] ({m['n'] - m['errors']} of {m['n']} right)")
    return 0


def cmd_predict(args, console, reporter) -> int:
    from vistrain.api import predict
    from vistrain.evaluation.render import predictions_table

    if args.unsure is not None and not 0 < args.unsure < 1:
        raise ValueError(f"--unsure {args.unsure} must be a probability between 0 and 1")
    if args.top_k < 1:
        raise ValueError(f"--top-k {args.top_k} must be at least 1")
    rows = predict(args.run, args.inputs, top_k=args.top_k, unsure=args.unsure, csv_path=args.csv,
                   into=args.into, reporter=reporter)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        console.print(predictions_table(rows, min(args.top_k, len(rows[0]["top"]) if rows and rows[0]["top"] else 1)))
    failed = sum(1 for r in rows if r["error"])
    unsure = sum(1 for r in rows if r["unsure"])
    console.print(f"{len(rows)} file(s): {len(rows) - failed} classified ({unsure} unsure), {failed} failed"
                  + (f"; CSV written to {args.csv}" if args.csv else "")
                  + (f"; copies sorted into {args.into}/" if args.into else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from rich.console import Console

    from vistrain.progress import RichReporter

    console = Console(stderr=getattr(args, "json", False))  # keep stdout pure JSON with --json
    reporter = RichReporter(Console(stderr=True))
    commands = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict}
    try:
        return commands[args.command](args, console, reporter)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        return 130
    except (ValueError, FileNotFoundError) as exc:
        # Our errors (DataError, TrainError, BackboneError, ModelError...) say what is wrong and where.
        console.print(f"[bold red]error:[/] {exc}", highlight=False)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""``vistrain report``: RUN/report.html with errors, heat maps, calibration and abstention."""

from __future__ import annotations

from pathlib import Path

from rich.markup import escape

from vistrain.commands import LABELLED, add_data_flags, add_device_flag, cache_dir

NAME = "report"
ORDER = 25


def register(sub) -> None:
    r = sub.add_parser(NAME, help="write RUN/report.html: errors, heat maps, calibration, abstention")
    r.add_argument("run", type=Path, help="run folder")
    r.add_argument("data", type=Path, nargs="?",
                   help=f"labelled images to report on: {LABELLED} (default: the run's validation split, "
                        "where the temperature and the 'unsure' threshold are refitted and stored)")
    r.add_argument("--target-precision", type=float, default=None, metavar="P",
                   help="precision the 'unsure' threshold must reach (default: the run's, else 0.95)")
    r.add_argument("--top-losses", type=int, default=16, metavar="N", help="worst errors to show (default 16)")
    r.add_argument("--per-class", type=int, default=None, metavar="N",
                   help="correct predictions per class shown with heat maps (default 2; 1, smaller, above 40 classes)")
    r.add_argument("--tta", action="store_true", help="average each image with its mirror image; reports the gain")
    add_device_flag(r, "the model runs")
    add_data_flags(r)


def calibration_line(c: dict, temperature: float, fitted_here: bool) -> str:
    """What the temperature does on these images. A temperature fitted here but set aside is said
    apart from the one kept (1): "with temperature 1.00 (fitted here ...)" claimed the wrong one."""
    from vistrain.evaluation.calibration import set_aside

    if set_aside(c):
        why = ("it did not lower the held-out log-loss" if c.get("heldout_nll_raw") is not None
               else "too few images (fewer than 10) to check it on held-out ones")
        return (f"calibration error {c['ece_before']:.1%}; temperature kept at {temperature:.2f} (stored in the run); "
                f"{c['fitted_temperature']:.2f} fitted here, not applied: {why}")
    return (f"calibration error {c['ece_before']:.1%} -> {c['ece_after']:.1%} with temperature {temperature:.2f}"
            + (" (fitted here and stored in the run)" if fitted_here else " (the run's, fitted on validation)"))


def run(args, console, reporter) -> int:
    from vistrain.evaluation.labelled import describe_unknown
    from vistrain.evaluation.render import ci_text
    from vistrain.evaluation.report import write_report
    from vistrain.evaluation.seen import describe_overlap
    from vistrain.familiarity import describe_unfamiliar

    path, a = write_report(args.run, args.data, args.label_from_name, args.target_precision, args.tta,
                           args.top_losses, args.per_class, reporter, cache_dir(args), args.device)
    m, c, s = a.metrics, a.calibration, a.abstention
    console.print(f"[bold]Report written:[/] {escape(str(path))}")
    console.print(f"  {escape(str(a.source))}: accuracy {m['accuracy']:.1%} ({ci_text(m).removeprefix('; ')}), "
                  f"{m['errors']} error(s) copied into {escape(str(Path(args.run) / 'errors'))}/")
    if a.overlap:
        console.print(f"  [yellow]{escape(describe_overlap(a.overlap, m['n'], f'{args.run}/split.csv'))}[/]")
    unknown = describe_unknown(m)
    if unknown:
        console.print(f"  [yellow]note: {escape(unknown)}[/]")
    odd = describe_unfamiliar(a.unfamiliar, m["n"])
    if odd:
        console.print(f"  [magenta]{escape(odd)}[/]")
    console.print(f"  {calibration_line(c, a.temperature, a.fitted_here)}")
    if s["threshold"] is None:
        console.print(f"  no 'unsure' threshold reaches {s['target_precision']:.0%} precision on these images")
    else:
        console.print(f"  'unsure' below {s['threshold']:.3f}: {s['precision']:.1%} precision on {s['coverage']:.0%} "
                      f"of the images (target {s['target_precision']:.0%})")
    if a.tta:
        console.print(f"  mirror TTA: {a.tta['accuracy_plain']:.1%} -> {a.tta['accuracy_tta']:.1%}")
    for sk in a.skipped:
        console.print(f"  [yellow]left out[/] {escape(sk['path'])}: {escape(sk['reason'])}")
    return 0

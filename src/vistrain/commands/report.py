"""``vistrain report``: RUN/report.html with errors, heat maps, calibration and abstention."""

from __future__ import annotations

from pathlib import Path

from rich.markup import escape

from vistrain.commands import add_data_flags, add_device_flag, cache_dir

NAME = "report"
ORDER = 25


def register(sub) -> None:
    r = sub.add_parser(NAME, help="write RUN/report.html: errors, heat maps, calibration, abstention")
    r.add_argument("run", type=Path, help="run folder")
    r.add_argument("data", type=Path, nargs="?",
                   help="labelled images to report on (default: the run's validation split, where the "
                        "temperature and the 'unsure' threshold are refitted and stored)")
    r.add_argument("--target-precision", type=float, default=None, metavar="P",
                   help="precision the 'unsure' threshold must reach (default: the run's, else 0.95)")
    r.add_argument("--top-losses", type=int, default=16, metavar="N", help="worst errors to show (default 16)")
    r.add_argument("--per-class", type=int, default=None, metavar="N",
                   help="correct predictions per class shown with heat maps (default 2; 1, smaller, above 40 classes)")
    r.add_argument("--tta", action="store_true", help="average each image with its mirror image; reports the gain")
    add_device_flag(r, "the model runs")
    add_data_flags(r)


def run(args, console, reporter) -> int:
    from vistrain.evaluation.calibration import set_aside
    from vistrain.evaluation.labelled import describe_unknown
    from vistrain.evaluation.report import write_report
    from vistrain.evaluation.seen import describe_overlap
    from vistrain.familiarity import describe_unfamiliar

    path, a = write_report(args.run, args.data, args.label_from_name, args.target_precision, args.tta,
                           args.top_losses, args.per_class, reporter, cache_dir(args), args.device)
    m, c, s = a.metrics, a.calibration, a.abstention
    console.print(f"[bold]Report written:[/] {escape(str(path))}")
    console.print(f"  {escape(str(a.source))}: accuracy {m['accuracy']:.1%} (95% CI {m['accuracy_ci'][0]:.1%}–{m['accuracy_ci'][1]:.1%}), "
                  f"{m['errors']} error(s) copied into {escape(str(Path(args.run) / 'errors'))}/")
    if a.overlap:
        console.print(f"  [yellow]{escape(describe_overlap(a.overlap, m['n'], f'{args.run}/split.csv'))}[/]")
    unknown = describe_unknown(m)
    if unknown:
        console.print(f"  [yellow]note: {escape(unknown)}[/]")
    odd = describe_unfamiliar(a.unfamiliar, m["n"])
    if odd:
        console.print(f"  [magenta]{escape(odd)}[/]")
    console.print(f"  calibration error {c['ece_before']:.1%} -> {c['ece_after']:.1%} with temperature {a.temperature:.2f}"
                  + (" (fitted here and stored in the run)" if a.fitted_here else " (the run's, fitted on validation)")
                  + (f"; {c['fitted_temperature']:.2f} fitted, not applied: "
                     + ("it did not lower the held-out log-loss" if c.get("heldout_nll_raw") is not None
                        else "too few images (fewer than 10) to check it on held-out ones")
                     if set_aside(c) else ""))
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

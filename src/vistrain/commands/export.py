"""``vistrain export``."""

from __future__ import annotations

from pathlib import Path

from rich.markup import escape

NAME = "export"
ORDER = 50


def register(sub) -> None:
    p = sub.add_parser(NAME, help="export a run to ONNX (and int8), verified on its validation images")
    p.add_argument("run", type=Path, help="run folder")
    p.add_argument("--format", choices=["onnx"], default="onnx", help="export format (only onnx for now)")
    p.add_argument("--out", type=Path, help="export folder (default: RUN/export)")
    p.add_argument("--int8", action="store_true", help="also write an int8 model (ONNX Runtime quantization)")
    p.add_argument("--int8-method", choices=["static", "dynamic", "auto"], default="static",
                   help="static (calibrated on training images, default), dynamic, or auto: try both and keep "
                        "the more accurate (then the faster)")
    p.add_argument("--max-accuracy-drop", type=float, default=1.0, metavar="POINTS",
                   help="fail if int8 loses more accuracy than this, in percentage points, on the validation photos "
                        "or on those and the calibration photos together (default 1)")
    p.add_argument("--calibration-images", type=int, default=100, metavar="N",
                   help="training images used to calibrate static int8 (default 100)")


def run(args, console, reporter) -> int:
    from vistrain.export import ExportConfig, ExportError, Int8Refused, export_run

    cfg = ExportConfig(out=args.out, int8=args.int8, int8_method=args.int8_method,
                       max_accuracy_drop=args.max_accuracy_drop, calibration_images=args.calibration_images)
    try:
        result = export_run(args.run, cfg, reporter)
    except Int8Refused as exc:
        # The fp32 files are there and verified: show them, then why int8 is not; the exit code still
        # fails a script that asked for an int8 file.
        _print(console, exc.result)
        console.print(f"[bold yellow]int8 refused:[/] {escape(str(exc))}", highlight=False)
        return 1
    except ExportError as exc:
        console.print(f"[bold red]export failed:[/] {escape(str(exc))}", highlight=False)
        return 1
    _print(console, result)
    return 0


def _print(console, result) -> None:
    from vistrain.export import describe
    from vistrain.export.card import REFUSED_NOTE

    for line in describe(result):
        console.print(line, highlight=False, markup=False)
    for note in result.notes:
        if note.startswith(REFUSED_NOTE):  # only a refused int8 has one: its own last line says why
            continue
        console.print(f"  note: {note}", highlight=False, markup=False)

"""``vistrain serve`` (never imports torch: it runs from the serving install)."""

from __future__ import annotations

from pathlib import Path

NAME = "serve"
ORDER = 60


def register(sub) -> None:
    p = sub.add_parser(NAME, help="serve an exported model over HTTP, with a web page (no torch needed)")
    p.add_argument("model", type=Path, metavar="RUN_OR_EXPORT", help="export folder, or a run folder holding export/")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--variant", choices=["auto", "fp32", "int8"], default="auto",
                   help="which model file (auto: int8 when the export kept one)")
    p.add_argument("--threads", type=int, help="ONNX Runtime threads (default: all cores)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest request body in MB (default 20)")
    p.add_argument("--max-files", type=int, default=16, help="most images in one request (default 16)")
    p.add_argument("--max-batch", type=int, default=16, help="most images in one model call (default 16)")


def run(args, console, reporter) -> int:
    import uvicorn

    from vistrain.commands import check_address
    from vistrain.runtime import find_export, read_export
    from vistrain.serve import ServeConfig, create_app

    if not 0 < args.max_upload_mb <= 1024:
        raise ValueError(f"--max-upload-mb {args.max_upload_mb} must be between 0 and 1024")
    folder, info = read_export(find_export(args.model))  # fail here, before the server starts, on a bad folder
    cfg = ServeConfig(folder, args.variant, args.threads, int(args.max_upload_mb * 2**20), args.max_files,
                      max_batch=args.max_batch)
    variant = info.default if args.variant == "auto" else args.variant
    if variant not in info.models:
        raise ValueError(f"{folder}: no {variant} model in this export (has: {', '.join(info.models)}); "
                         f"run `vistrain export RUN --int8` for one")
    check_address(args.host, args.port)
    console.print(f"Serving {folder} ({variant}, {len(info.classes)} classes) on http://{args.host}:{args.port}/ "
                  f"(API docs at /docs); Ctrl+C stops", highlight=False, markup=False)
    uvicorn.run(create_app(cfg), host=args.host, port=args.port, log_level="warning")
    return 0

"""One module per ``vistrain`` sub-command.

Each module defines ``NAME``, ``ORDER`` (its place in ``--help``), ``register(subparsers)`` which adds
its parser, and ``run(args, console, reporter) -> int``. Modules import the library lazily inside
``run`` so that ``vistrain --help`` stays instant and the serving commands never import torch.
"""

from __future__ import annotations

import argparse
from pathlib import Path

# What evaluate and report read as labelled images. A flat folder needs --label-from-name only when
# its file names do not start with the model's class names (circles_1.jpg needs none).
LABELLED = ("class folders, a flat folder whose file names start with a class name (else --label-from-name), "
            "or a CSV of path,label")


def add_data_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--label-from-name", metavar="REGEX",
                   help="read labels from file names (flat folders): the first group, e.g. '(.+)_\\d+'")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="where scan results and caches live (default: $VISTRAIN_CACHE_DIR or ~/.cache/vistrain)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write any cache")


def add_device_flag(p: argparse.ArgumentParser, what: str) -> None:
    # Checked where it is used (vistrain.training.device), which lists the choices: no torch import here.
    p.add_argument("--device", default="auto", metavar="auto|cpu|cuda",
                   help=f"where {what}: auto (a GPU when PyTorch sees one, else the CPU), cpu or cuda (default auto)")


def add_variant_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--variant", choices=["auto", "fp32", "int8"], default="auto",
                   help="for an export folder: which ONNX file runs (default auto: int8 when the export kept one)")


def export_folder(args, console) -> Path | None:
    """The export folder to run with ONNX Runtime instead of the run's PyTorch model (see
    :func:`vistrain.runtime.files.export_to_use`), after refusing what only PyTorch serves."""
    from vistrain.runtime.files import export_to_use

    export = export_to_use(args.run)
    if export is None:
        if args.variant != "auto":
            raise ValueError(f"--variant {args.variant} is for export folders; {args.run} is a run folder")
        return None
    if args.device == "cuda":
        raise ValueError(f"{args.run}: an export folder runs on the CPU (ONNX Runtime); --device cuda needs the run folder")
    if export != args.run:
        console.print(f"PyTorch is not installed: running {export} (ONNX Runtime)", highlight=False, markup=False)
    return export


def cache_dir(args) -> Path | bool | None:
    return False if args.no_cache else args.cache_dir


def check_address(host: str, port: int) -> None:
    """Refuse a port out of range, a host that does not resolve, or an address already in use,
    before the banner says "Serving" (uvicorn would print a traceback or its own error after it)."""
    import errno
    import socket

    if not 1 <= port <= 65535:
        raise ValueError(f"--port {port} must be between 1 and 65535")
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise ValueError(f"--host {host}: {exc.strerror}") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(addr)
        except OSError as exc:
            hint = ": another program is listening there (try another --port)" if exc.errno == errno.EADDRINUSE else ""
            raise ValueError(f"cannot listen on {host}:{port}: {exc.strerror}{hint}") from None

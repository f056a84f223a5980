"""``vistrain clean``."""

from __future__ import annotations

from pathlib import Path

from vistrain.commands import add_data_flags, check_address
from vistrain.commands.audit import audit_config

NAME = "clean"
ORDER = 16


def register(sub) -> None:
    p = sub.add_parser(NAME, help="review the audit's suspects in a local web page: keep, relabel, quarantine, undo")
    p.add_argument("data", type=Path, help="dataset folder of class folders (files are moved only by your clicks)")
    add_data_flags(p)
    p.add_argument("--undo", nargs="?", const=1, type=int, metavar="N",
                   help="undo the last N review actions (default 1) and exit")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--no-features", action="store_true", help="review duplicates and conflicts only (no model)")
    p.add_argument("--image-size", type=int, help="feature input size in pixels (default: the size train would pick)")
    p.add_argument("--backbone", default="efficientnet_lite0")


def run(args, console, reporter) -> int:
    from vistrain.clean.journal import Journal

    journal = Journal(args.data)
    for note in journal.recovered:
        console.print(f"recovered: {note}", highlight=False, markup=False)
    if args.undo is not None:
        if args.undo < 1:
            raise ValueError(f"--undo {args.undo} must be at least 1")
        for _ in range(args.undo):
            done = journal.undo()
            if done is None:
                console.print("nothing (more) to undo")
                break
            console.print(f"undone: {done['undoes_action']} of {done['dst']} (it was at {done['src']})", highlight=False, markup=False)
        return 0
    check_address(args.host, args.port)  # before the audit, which can take minutes
    import uvicorn

    from vistrain.clean.app import create_app, suspects
    from vistrain.clean.audit import audit

    result = audit(audit_config(args), reporter)
    app = create_app(args.data, result, journal, host=args.host)
    console.print(f"{len(suspects(result))} suspect(s) to review at http://{args.host}:{args.port}/ "
                  f"(Ctrl+C to stop; `vistrain clean {args.data} --undo` reverses the last action)", highlight=False, markup=False)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0

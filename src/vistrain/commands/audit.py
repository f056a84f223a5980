"""``vistrain audit``."""

from __future__ import annotations

import json
from pathlib import Path

from vistrain.commands import add_data_flags, cache_dir

NAME = "audit"
ORDER = 15
ROWS_PER_KIND = 8


def register(sub) -> None:
    p = sub.add_parser(NAME, help="find duplicates, leaks, conflicts, unreadable files, shortcuts and likely label errors")
    p.add_argument("data", type=Path, help="dataset folder (or CSV)")
    add_data_flags(p)
    p.add_argument("--json", action="store_true", help="print the findings as JSON")
    p.add_argument("--out", type=Path, help="also write the findings to this JSON file")
    p.add_argument("--no-features", action="store_true",
                   help="hash-level checks only (seconds): no label errors, outliers or feature near-duplicates")
    p.add_argument("--image-size", type=int, help="feature input size in pixels (default: the size train would pick)")
    p.add_argument("--backbone", default="efficientnet_lite0")


def audit_config(args):
    from vistrain.clean.audit import AuditConfig
    from vistrain.data.dataset import DataConfig, resolve_cache_dir

    if args.image_size is not None and not 32 <= args.image_size <= 1024:
        raise ValueError(f"--image-size {args.image_size} is outside 32..1024 pixels")
    data = DataConfig(args.data, args.label_from_name, cache_dir=resolve_cache_dir(cache_dir(args)))
    return AuditConfig(data, features=not args.no_features, backbone=args.backbone, image_size=args.image_size)


def run(args, console, reporter) -> int:
    from vistrain.clean.audit import audit
    from vistrain.clean.render import audit_table, summary_line

    result = audit(audit_config(args), reporter)
    if args.out:
        result.save(args.out)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        console.print(audit_table(result, ROWS_PER_KIND))
        for note in result.notes:
            console.print(f"note: {note}", highlight=False, markup=False)
    console.print(summary_line(result) + (f"; written to {args.out}" if args.out else ""), highlight=False, markup=False)
    return 0

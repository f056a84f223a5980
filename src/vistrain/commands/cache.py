"""``vistrain cache``: where the caches are, how big, and clearing them."""

from __future__ import annotations

from pathlib import Path

NAME = "cache"
ORDER = 90


def register(sub) -> None:
    c = sub.add_parser(NAME, help="show the cache folder's size, or clear parts of it")
    c.add_argument("--cache-dir", type=Path, default=None,
                   help="cache folder (default: $VISTRAIN_CACHE_DIR or ~/.cache/vistrain)")
    c.add_argument("--clear", nargs="+", metavar="PART",
                   help="delete these parts: scan, pixels, features, onnx, or all (rebuilt when needed)")


def run(args, console, reporter) -> int:
    from rich.table import Table
    from rich.text import Text

    from vistrain.cache import (
        PARTS,
        PIXEL_LIMIT_ENV,
        cache_usage,
        clear_cache,
        pixel_cache_limit,
    )
    from vistrain.data.dataset import default_cache_dir

    root = args.cache_dir or default_cache_dir()
    if args.clear:
        parts = list(PARTS) if "all" in args.clear else args.clear
        freed = clear_cache(root, parts)
        console.print(f"cleared {', '.join(parts)} in {root}: {freed / 1e6:.1f} MB freed", markup=False)
        return 0
    table = Table(title=Text(f"vistrain cache: {root}"))
    for col in ("part", "files", "size", "path"):
        table.add_column(col, justify="right" if col in ("files", "size") else "left")
    usage = cache_usage(root)
    for u in usage:
        table.add_row(u.part, str(u.files), f"{u.bytes / 1e6:.1f} MB", Text(str(u.path)))
    console.print(table)
    limit = pixel_cache_limit()
    console.print(f"total {sum(u.bytes for u in usage) / 1e6:.1f} MB; "
                  "clear with: vistrain cache --clear pixels|features|scan|onnx|all", highlight=False)
    console.print(f"pixels are kept to {limit / 1e9:g} GB (${PIXEL_LIMIT_ENV}): each training run removes "
                  "the entries used longest ago, at its start and at its end" if limit != float("inf") else
                  f"pixels: no size limit (${PIXEL_LIMIT_ENV}=inf)", highlight=False)
    return 0

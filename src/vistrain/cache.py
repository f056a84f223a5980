"""What vistrain keeps in its cache folder, how big it is, and clearing it.

Everything here can be rebuilt from the photos: scan results (``scan.json``), decoded pixels
(``pixels/``), frozen-backbone features (``features/``) and exported backbones (``onnx/``).
Nothing in the cache is a user's file, so clearing it loses only time.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

PARTS = {
    "scan": "scan.json",
    "pixels": "pixels",
    "features": "features",
    "onnx": "onnx",
}


@dataclass
class CacheUsage:
    part: str
    path: Path
    files: int
    bytes: int


def cache_usage(root: Path) -> list[CacheUsage]:
    out = []
    for part, name in PARTS.items():
        p = Path(root) / name
        files = [p] if p.is_file() else [f for f in p.rglob("*") if f.is_file()] if p.is_dir() else []
        out.append(CacheUsage(part, p, len(files), sum(f.stat().st_size for f in files)))
    return out


def clear_cache(root: Path, parts: list[str]) -> int:
    """Delete the named parts of the cache (see ``PARTS``); returns the bytes freed."""
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"unknown cache part(s) {', '.join(unknown)}: choose from {', '.join(PARTS)} or all")
    freed = 0
    for u in cache_usage(root):
        if u.part not in parts or not u.path.exists():
            continue
        freed += u.bytes
        if u.path.is_dir():
            shutil.rmtree(u.path)
        else:
            u.path.unlink()
    return freed

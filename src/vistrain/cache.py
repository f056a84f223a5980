"""What vistrain keeps in its cache folder, how big it is, and clearing it.

Everything here can be rebuilt from the photos: scan results (``scan.json``), decoded pixels
(``pixels/``), frozen-backbone features (``features/``) and exported backbones (``onnx/``).
Nothing in the cache is a user's file, so clearing it loses only time.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Collection
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


PIXEL_LIMIT_ENV = "VISTRAIN_PIXEL_CACHE_GB"
DEFAULT_PIXEL_LIMIT_GB = 20.0  # clothing's 3781 photos take 3.8 GB at 352 px


def pixel_cache_limit() -> float:
    """Bytes the decoded-pixel cache may hold (``$VISTRAIN_PIXEL_CACHE_GB``, default 20; ``inf``: no limit)."""
    text = os.environ.get(PIXEL_LIMIT_ENV, "").strip()
    if not text:
        return DEFAULT_PIXEL_LIMIT_GB * 1e9
    try:
        gb = float(text)
    except ValueError:
        gb = -1.0
    if not gb > 0:
        raise ValueError(f"${PIXEL_LIMIT_ENV}={text!r} must be a positive number of gigabytes (or inf: no limit)")
    return gb * 1e9


@dataclass
class Trimmed:
    files: int
    bytes: int
    total: int  # the pixel cache's bytes afterwards


def trim_pixels(root: Path, limit: float, since: float, keep: Collection[Path] = ()) -> Trimmed:
    """Delete the decoded pixels used longest ago until the pixel cache holds at most ``limit`` bytes,
    sparing every entry used at or after ``since`` (the running job's own images: a run larger than
    the limit keeps all of its own) and the files in ``keep`` (``PixelCache.entry_file`` of the same
    ``root``: the entries a job is about to read, at its own input size; the same images at other
    sizes may go). Entries are marked used when read (``PixelCache.touch``)."""
    folder = Path(root) / PARTS["pixels"]
    keep = {Path(k) for k in keep}
    entries, total = [], 0
    for f in folder.rglob("*.safetensors") if folder.is_dir() else []:
        try:
            st = f.stat()
        except OSError:
            continue  # removed meanwhile by another run
        total += st.st_size  # kept entries count against the limit too
        if f not in keep:
            entries.append((st.st_mtime, st.st_size, f))
    files = freed = 0
    for mtime, size, f in sorted(entries, key=lambda e: (e[0], str(e[2]))):
        if total - freed <= limit or mtime >= since:
            break
        try:
            f.unlink()
        except OSError:
            continue
        files, freed = files + 1, freed + size
    return Trimmed(files, freed, total - freed)

"""Scanning: every file opened and decoded once, the outcome cached by (path, size, mtime)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from vistrain.data.images import DEFAULT_MAX_PIXELS, ImageError, decode_with_header
from vistrain.data.layout import Entry
from vistrain.data.phash import colour_signature, phash

SCAN_CACHE_VERSION = 3  # 2: perceptual hash; 3: colour signature


@dataclass
class Record:
    """One file of the dataset index: where it is, what it is labelled, and whether it is usable."""

    path: str
    label: str | None
    split: str | None
    ok: bool
    reason: str | None = None
    width: int = 0
    height: int = 0
    format: str | None = None
    mode: str | None = None
    bytes: int = 0
    sha1: str | None = None
    phash: str | None = None  # perceptual hash (duplicates at any size or encoding)
    colour: str | None = None  # mean colour of each quarter (near duplicates must match it too)


def _inspect(path: Path, max_pixels: int) -> dict:
    """Facts about one file; raises nothing, a failure is a fact too."""
    facts: dict = {"ok": False}
    try:
        data = path.read_bytes()
    except OSError as exc:
        facts["reason"] = f"cannot read file ({exc.strerror or exc})"
        return facts
    facts["bytes"] = len(data)
    facts["sha1"] = hashlib.sha1(data).hexdigest()
    try:
        # Decoding at reduced scale still reads every byte, so truncation and corruption show.
        rgb, header = decode_with_header(path, min_side=64, max_pixels=max_pixels, data=data)
    except ImageError as exc:
        facts["reason"] = exc.reason
        return facts
    except Exception as exc:  # noqa: BLE001 -- Pillow raises many types for hostile files; each is a skip, not a crash
        facts["reason"] = f"unreadable ({type(exc).__name__}: {exc})"
        return facts
    facts.update(format=header["format"], mode=header["mode"])
    w, h = header["width"], header["height"]
    if (rgb.size[0] > rgb.size[1]) != (w > h) and rgb.size[0] != rgb.size[1]:
        w, h = h, w  # EXIF rotated the photo by 90 degrees: record its upright size
    facts.update(ok=True, width=w, height=h, phash=phash(rgb), colour=colour_signature(rgb))
    return facts


class ScanCache:
    """A JSON map from absolute path to the facts found at a given (size, mtime)."""

    def __init__(self, path: Path | None):
        self.path = path
        self._data: dict[str, dict] = {}
        if path is not None and path.exists():
            try:
                blob = json.loads(path.read_text())
                if blob.get("version") == SCAN_CACHE_VERSION:
                    self._data = blob["files"]
            except (OSError, ValueError, KeyError):
                self._data = {}  # a damaged cache is only a slower scan

    def get(self, path: Path, stat: os.stat_result) -> dict | None:
        hit = self._data.get(str(path))
        if hit and hit["size"] == stat.st_size and hit["mtime_ns"] == stat.st_mtime_ns:
            return hit["facts"]
        return None

    def put(self, path: Path, stat: os.stat_result, facts: dict) -> None:
        self._data[str(path)] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "facts": facts}

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"version": SCAN_CACHE_VERSION, "files": self._data}))
        tmp.replace(self.path)


def scan(
    entries: list[Entry],
    cache_file: Path | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: Callable[[int], None] | None = None,
    workers: int | None = None,
) -> tuple[list[Record], int]:
    """Inspect every entry; returns the records and how many came from the cache."""
    cache = ScanCache(cache_file)
    results: list[dict | None] = [None] * len(entries)
    todo = []
    for i, e in enumerate(entries):
        try:
            st = e.path.stat()
        except OSError as exc:
            results[i] = {"ok": False, "reason": f"cannot read file ({exc.strerror or exc})"}
            continue
        hit = cache.get(e.path, st)
        if hit is not None:
            results[i] = hit
            if progress:
                progress(1)
        else:
            todo.append((i, st))

    def work(item):
        i, st = item
        return i, st, _inspect(entries[i].path, max_pixels)

    # Pillow releases the GIL while decoding, so threads use every core.
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        for i, st, facts in pool.map(work, todo):
            results[i] = facts
            cache.put(entries[i].path, st, facts)
            if progress:
                progress(1)
    if todo:
        cache.save()
    records = [
        Record(path=str(e.path), label=e.label, split=e.split, **_record_fields(f))
        for e, f in zip(entries, results)
    ]
    return records, len(entries) - len(todo)


def _record_fields(facts: dict) -> dict:
    names = {k for k in Record.__dataclass_fields__ if k not in ("path", "label", "split")}
    return {k: v for k, v in facts.items() if k in names}

"""Decoded, resized pixels on disk: every image is decoded once, then reused across epochs and runs.

Each image (by content hash) gets one small safetensors file per preprocessing: its evaluation view
(``size x size x 3``) and its training canvas (a little larger, aspect kept; see
:func:`~vistrain.data.transforms.to_train_canvas`). Training reads canvases from here batch by
batch, so a large dataset does not have to fit in memory, and a second run decodes nothing.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import PIL
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from vistrain.data.images import load_rgb
from vistrain.data.transforms import (
    CANVAS_MARGIN,
    Preprocessing,
    to_model_pixels,
    to_train_canvas,
)

PIXEL_CACHE_VERSION = 1


class PixelCache:
    """Evaluation views and training canvases of images, keyed by content hash (sha1) + preprocessing."""

    def __init__(self, root: Path, prep: Preprocessing, margin: float = CANVAS_MARGIN):
        self.root, self.prep, self.margin = Path(root), prep, margin
        # Pillow's resampling can change between major releases: its version is part of the key.
        name = f"v{PIXEL_CACHE_VERSION}-{prep.key()}-m{margin:g}-pil{PIL.__version__.split('.')[0]}"
        self.folder = self.root / "pixels" / name

    def entry_file(self, sha1: str) -> Path:
        """Where an image's entry lives (at this preprocessing), whether or not it exists."""
        return self.folder / sha1[:2] / f"{sha1}.safetensors"

    def has(self, sha1: str) -> bool:
        return self.entry_file(sha1).exists()

    def touch(self, sha1: str) -> None:
        """Mark an entry used now: the cache's size limit removes the longest unused first."""
        try:
            os.utime(self.entry_file(sha1))
        except OSError:
            pass  # gone meanwhile: it is rebuilt when read

    def load(self, sha1: str) -> dict[str, np.ndarray] | None:
        """``{"eval": ..., "canvas": ...}``, or None when unknown or unreadable (then it is rebuilt)."""
        try:
            return load_file(str(self.entry_file(sha1)))
        except (OSError, ValueError, SafetensorError):
            return None

    def canvas(self, sha1: str) -> np.ndarray:
        arrays = self.load(sha1)
        if arrays is None:
            raise FileNotFoundError(f"pixel cache entry {self.entry_file(sha1)} vanished during training")
        return arrays["canvas"]

    def build(self, sha1: str, path: str, max_pixels: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Decode ``path`` into its eval view and training canvas, store both, and return them."""
        img = load_rgb(path, min_side=self.prep.size, **({"max_pixels": max_pixels} if max_pixels else {}))
        view, canvas = to_model_pixels(img, self.prep), to_train_canvas(img, self.prep, self.margin)
        self.save(sha1, view, canvas)
        return view, canvas

    def save(self, sha1: str, eval_pixels: np.ndarray, canvas: np.ndarray) -> None:
        path = self.entry_file(sha1)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{uuid.uuid4().hex}.tmp")
        save_file({"eval": np.ascontiguousarray(eval_pixels), "canvas": np.ascontiguousarray(canvas)}, str(tmp))
        os.replace(tmp, path)  # readers never see half a file, even with two runs at once

    def entry_bytes(self) -> int:
        """About what one new entry takes on disk: its eval view plus the canvas of a 4:3 photo
        (1.03 MB at 352 px; climbing's measured 1.07 MB)."""
        return int(3 * self.prep.size ** 2 * (1 + self.margin ** 2 * 4 / 3))

    def disk_bytes(self) -> int:
        if not self.folder.exists():
            return 0
        return sum(f.stat().st_size for f in self.folder.rglob("*.safetensors"))


class DiskCanvases(Sequence):
    """Training canvases read from the pixel cache on demand: a list-like that holds nothing in memory.

    With ``paths``, an entry removed meanwhile (``vistrain cache --clear``, or another run trimming
    the cache to its size limit) is decoded again from its photo instead of failing the epoch."""

    def __init__(self, cache: PixelCache, keys: list[str], paths: list[str] | None = None):
        self.cache, self.keys = cache, list(keys)
        self.paths = list(paths) if paths is not None else None

    def __len__(self) -> int:
        return len(self.keys)

    def _get(self, i: int) -> np.ndarray:
        if self.paths is None:
            return self.cache.canvas(self.keys[i])  # a missing entry raises, naming it
        arrays = self.cache.load(self.keys[i])
        return arrays["canvas"] if arrays is not None else self.cache.build(self.keys[i], self.paths[i])[1]

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self._get(k) for k in range(len(self.keys))[i]]
        return self._get(i)

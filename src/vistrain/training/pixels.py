"""Decode each image once into the arrays every stage reads: eval pixels and training canvases.

With a :class:`~vistrain.data.pixel_cache.PixelCache`, decoded views are written to disk and reused
by later stages and later runs, and training canvases are read back batch by batch instead of
being held in memory.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from vistrain.data.images import load_rgb
from vistrain.data.pixel_cache import DiskCanvases, PixelCache
from vistrain.data.transforms import Preprocessing, to_model_pixels, to_train_canvas


def decode_all(
    paths: list[str],
    prep: Preprocessing,
    canvases: bool = False,
    progress: Callable[[int], None] | None = None,
    max_pixels: int | None = None,
    cache: PixelCache | None = None,
    keys: list[str] | None = None,
    pixels: bool = True,
) -> tuple[np.ndarray | None, Sequence[np.ndarray] | None]:
    """Eval pixels (``N x size x size x 3`` uint8, unless ``pixels=False``) and, optionally, canvases.

    JPEGs decode in draft mode at just enough resolution for the eval view, exactly as the
    predictor decodes them, so eval pixels (and features computed from them) are the same
    whichever stage made them; canvases are made from that same decoded image.
    With ``cache`` (and ``keys``, the files' content hashes) known images are not decoded again,
    new ones are written to it, and canvases come back as a disk-backed sequence.
    """
    if cache is not None and (keys is None or len(keys) != len(paths)):
        raise ValueError("decode_all: a pixel cache needs one content hash per path")
    if cache is not None and cache.prep != prep:
        raise ValueError(f"decode_all: the pixel cache holds {cache.prep.key()}, not {prep.key()}")
    n = len(paths)
    out_pixels = np.empty((n, prep.size, prep.size, 3), dtype=np.uint8) if pixels else None
    in_memory = canvases and cache is None
    out_canvases: list[np.ndarray] | None = [None] * n if in_memory else None  # type: ignore[list-item]
    kwargs = {"max_pixels": max_pixels} if max_pixels else {}

    def work(i: int) -> int:
        if cache is not None:
            if out_pixels is None and cache.has(keys[i]):
                cache.touch(keys[i])
                return i  # canvases are read later, on demand; nothing to do now
            hit = cache.load(keys[i])
            if hit is not None:
                cache.touch(keys[i])
                if out_pixels is not None:
                    out_pixels[i] = hit["eval"]
                return i
            view, _ = cache.build(keys[i], paths[i], max_pixels)
            if out_pixels is not None:
                out_pixels[i] = view
            return i
        img = load_rgb(paths[i], min_side=prep.size, **kwargs)
        if out_pixels is not None:
            out_pixels[i] = to_model_pixels(img, prep)
        if out_canvases is not None:
            out_canvases[i] = to_train_canvas(img, prep)
        return i

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for _ in pool.map(work, range(n)):
            if progress:
                progress(1)
    if canvases and cache is not None:
        return out_pixels, DiskCanvases(cache, keys, paths)
    return out_pixels, out_canvases

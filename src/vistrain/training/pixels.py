"""Decode each image once per run into the arrays every stage reads: eval pixels and train canvases."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np

from vistrain.data.images import load_rgb
from vistrain.data.transforms import Preprocessing, to_model_pixels, to_train_canvas


def decode_all(
    paths: list[str],
    prep: Preprocessing,
    canvases: bool = False,
    progress: Callable[[int], None] | None = None,
    max_pixels: int | None = None,
) -> tuple[np.ndarray, list[np.ndarray] | None]:
    """Eval pixels (``N x size x size x 3`` uint8) and, optionally, training canvases.

    JPEGs decode in draft mode at just enough resolution for the eval view, exactly as the
    predictor decodes them, so eval pixels (and features computed from them) are the same
    whichever stage made them; canvases are made from that same decoded image.
    """
    n = len(paths)
    pixels = np.empty((n, prep.size, prep.size, 3), dtype=np.uint8)
    out_canvases: list[np.ndarray] | None = [None] * n if canvases else None  # type: ignore[list-item]
    kwargs = {"max_pixels": max_pixels} if max_pixels else {}

    def work(i: int) -> int:
        img = load_rgb(paths[i], min_side=prep.size, **kwargs)
        pixels[i] = to_model_pixels(img, prep)
        if out_canvases is not None:
            out_canvases[i] = to_train_canvas(img, prep)
        return i

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for _ in pool.map(work, range(n)):
            if progress:
                progress(1)
    return pixels, out_canvases

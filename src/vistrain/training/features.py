"""Frozen-backbone features, computed in inference mode in channels_last batches."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from vistrain.data.transforms import Preprocessing, normalize


@torch.inference_mode()
def extract_features(
    backbone: nn.Module,
    pixels: np.ndarray,
    prep: Preprocessing,
    batch_size: int = 32,
    flip: bool = False,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Pooled features for ``N x S x S x 3`` uint8 pixels (of their mirror images with ``flip``)."""
    backbone.eval()
    out = []
    for start in range(0, len(pixels), batch_size):
        chunk = pixels[start : start + batch_size]
        if flip:
            chunk = chunk[:, :, ::-1]
        x = normalize(np.ascontiguousarray(chunk), prep)
        out.append(backbone(x).float().numpy())
        if progress:
            progress(len(chunk))
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)

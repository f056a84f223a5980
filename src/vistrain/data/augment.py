"""Training augmentation from cached canvases: random resized crop, flip, colour jitter.

Works on uint8 canvases made once by :func:`~vistrain.data.transforms.to_train_canvas`, so no
epoch decodes a file again. Randomness comes from the generator passed in: seeded runs repeat.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from vistrain.data.transforms import Preprocessing, _resample, normalize


@dataclass(frozen=True)
class AugmentConfig:
    """Strength of each augmentation; ``scale`` is the range of crop area as a share of the canvas."""

    scale: tuple[float, float] = (0.35, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    # "auto": flip unless the mirror check (training/mirror.py) finds that mirror images change labels.
    flip: bool | str = "auto"
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.flip not in (True, False, "auto"):
            raise ValueError(f"augmentation flip {self.flip!r} must be true, false or auto")
        lo, hi = self.scale
        if not 0.05 <= lo <= hi <= 1.0:
            raise ValueError(f"augmentation scale {self.scale} must satisfy 0.05 <= low <= high <= 1")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"colour jitter {self.jitter} must be within 0..1")


def random_resized_crop(
    canvas: np.ndarray, prep: Preprocessing, cfg: AugmentConfig, rng: np.random.Generator
) -> np.ndarray:
    """One crop of a random area and aspect ratio, resized to ``size x size`` (torchvision's rule)."""
    h, w = canvas.shape[:2]
    area = h * w
    box = None
    for _ in range(10):
        target = area * rng.uniform(*cfg.scale)
        aspect = math.exp(rng.uniform(math.log(cfg.ratio[0]), math.log(cfg.ratio[1])))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            box = (x0, y0, x0 + cw, y0 + ch)
            break
    if box is None:  # fall back to the largest centred square
        side = min(h, w)
        box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
    img = Image.fromarray(canvas).resize((prep.size, prep.size), _resample(prep), box=box)
    return np.asarray(img, dtype=np.uint8)


def augment_batch(
    canvases: list[np.ndarray], prep: Preprocessing, cfg: AugmentConfig, rng: np.random.Generator
) -> torch.Tensor:
    """A normalised training batch from canvases."""
    crops = np.stack([random_resized_crop(c, prep, cfg, rng) for c in canvases])
    if cfg.flip:
        flips = rng.random(len(crops)) < 0.5
        crops[flips] = crops[flips, :, ::-1]
    x = torch.from_numpy(crops).float().div_(255.0)  # N H W 3 in [0, 1]
    if cfg.jitter > 0:
        n = len(crops)
        j = cfg.jitter

        def factors() -> torch.Tensor:
            return torch.from_numpy(rng.uniform(1 - j, 1 + j, size=(n, 1, 1, 1)).astype(np.float32))

        x = x * factors()  # brightness
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * factors() + mean  # contrast
        grey = (x * torch.tensor([0.299, 0.587, 0.114])).sum(dim=3, keepdim=True)
        x = (x - grey) * factors() + grey  # saturation
        x = x.clamp_(0.0, 1.0)
    return normalize((x * 255.0).round_().to(torch.uint8), prep)

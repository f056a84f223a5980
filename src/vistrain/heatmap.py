"""Class activation heat maps with numpy and Pillow only (no torch), shared by the report, the
PyTorch and ONNX predictors and the server.

For vistrain's networks (last convolutional stage -> global average pool -> linear head), Grad-CAM
at the last stage is exactly the class activation map: the gradient of logit ``c`` with respect to
the feature ``A_k(i, j)`` is ``w_ck / (h * w)`` everywhere, so Grad-CAM's channel weights are the
head's row ``w_c`` up to a constant. That lets the torch-free path compute the same map from the
feature map and the head weights.
"""

from __future__ import annotations

import base64
import functools
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from vistrain.data.images import ImageError, load_rgb
from vistrain.data.layout import label_as_name
from vistrain.data.transforms import Preprocessing, to_model_pixels


def cam_from_features(feature_map: np.ndarray, class_weights: np.ndarray) -> np.ndarray:
    """``C x h x w`` features and the head's ``C`` weights of one class -> ``h x w`` map in [0, 1]."""
    if feature_map.ndim != 3 or class_weights.shape != (feature_map.shape[0],):
        raise ValueError(f"feature map {feature_map.shape} and class weights {class_weights.shape} do not match")
    cam = np.tensordot(class_weights.astype(np.float32), feature_map.astype(np.float32), axes=(0, 0))
    return normalise_cam(cam)


def normalise_cam(cam: np.ndarray) -> np.ndarray:
    """ReLU, then scale to [0, 1]; an all-zero map stays zero (no evidence anywhere)."""
    cam = np.maximum(cam, 0.0)
    top = float(cam.max())
    return (cam / top if top > 0 else cam).astype(np.float32)


def colormap(values: np.ndarray) -> np.ndarray:
    """[0, 1] -> RGB uint8 with a perceptually ordered blue-green-yellow-red ramp (like 'turbo')."""
    stops = np.array([[48, 18, 59], [40, 130, 255], [30, 220, 160], [200, 240, 40], [250, 150, 30], [180, 20, 5]],
                     dtype=np.float32)
    x = np.clip(values, 0.0, 1.0) * (len(stops) - 1)
    lo = np.floor(x).astype(int).clip(0, len(stops) - 2)
    frac = (x - lo)[..., None]
    return (stops[lo] * (1 - frac) + stops[lo + 1] * frac).round().astype(np.uint8)


def overlay(rgb: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend a heat map (any resolution, values in [0, 1]) over an ``H x W x 3`` uint8 image."""
    h, w = rgb.shape[:2]
    big = np.asarray(Image.fromarray((np.clip(cam, 0, 1) * 255).astype(np.uint8)).resize((w, h), Image.Resampling.BILINEAR))
    # The resized map has 256 levels: colour and blend weight are looked up per level, not computed
    # per pixel (half the time; a live camera asks for a map per frame).
    heat, a = _overlay_tables(alpha)
    a = a[big][..., None]
    return (rgb.astype(np.float32) * (1 - a) + heat[big] * a).round().clip(0, 255).astype(np.uint8)


@functools.cache
def _overlay_tables(alpha: float) -> tuple[np.ndarray, np.ndarray]:
    level = np.arange(256, dtype=np.float32) / 255.0
    # Weighted by the map itself, so cold regions keep the photo readable.
    return colormap(level).astype(np.float32), (alpha * (0.35 + 0.65 * level)).astype(np.float32)


def jpeg_data_url(rgb: np.ndarray, quality: int = 90) -> str:
    """An ``H x W x 3`` uint8 image as a JPEG data URL, for a page or a JSON answer. JPEG, not PNG: a
    photo with a heat map over it is what JPEG is for. At 352 px it encodes in 0.6 ms to about 40 kB;
    PNG took 42 ms and 290 kB, more than the model itself, for every frame the camera asks a map for."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def write_heatmap_files(rows: list[dict], folder: Path, prep: Preprocessing, classes: list[str],
                        cams: Callable[[np.ndarray, np.ndarray], list[np.ndarray]], progress=None,
                        batch_size: int = 16) -> list[Path]:
    """For each classified row, ``folder/<file stem>.<predicted class>.png``: the model's view of the
    photo with the heat map of its answer over it; ``cams(pixels, class_indices)`` is any model's
    (Grad-CAM in PyTorch, the class activation map from an export's features). Existing files are
    never overwritten."""
    folder.mkdir(parents=True, exist_ok=True)
    todo = [r for r in rows if r["label"] is not None]
    written: list[Path] = []
    for start in range(0, len(todo), batch_size):
        chunk, pixels = [], []
        for r in todo[start : start + batch_size]:
            try:
                pixels.append(to_model_pixels(load_rgb(r["path"], min_side=prep.size), prep))
                chunk.append(r)
            except ImageError:
                continue  # changed since it was classified; its row already says what happened
        if chunk:
            targets = np.array([classes.index(r["label"]) for r in chunk])
            for r, px, cam in zip(chunk, pixels, cams(np.stack(pixels), targets)):
                written.append(save_heatmap(folder, r["path"], r["label"], px, cam))
        if progress:
            progress(len(todo[start : start + batch_size]))
    return written


def save_heatmap(folder: Path, path: str | Path, label: str, pixels: np.ndarray, cam: np.ndarray) -> Path:
    """``folder/<file stem>.<label>.png``: ``cam`` over the model's view of the photo; an existing
    file is never overwritten (``_1``, ``_2``... instead)."""
    stem = f"{Path(path).stem}.{label_as_name(label)}"
    folder.mkdir(parents=True, exist_ok=True)
    dest, n = folder / f"{stem}.png", 1
    while dest.exists():
        dest, n = folder / f"{stem}_{n}.png", n + 1
    Image.fromarray(overlay(pixels, cam)).save(dest)
    return dest

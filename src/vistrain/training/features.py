"""Frozen-backbone features: ONNX Runtime when installed (measured ~1.7-2.5x faster than PyTorch on
2 CPU cores for EfficientNet-Lite), else PyTorch in inference mode with channels_last batches; and
features read from, or added to, the feature cache (one per backbone, or per ensemble member)."""

from __future__ import annotations

import hashlib
import os
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vistrain import __version__
from vistrain.data.pixel_cache import PixelCache
from vistrain.data.transforms import Preprocessing, normalize
from vistrain.memory import inference_batch_size
from vistrain.models.inference import WORTH_IT, inference_copy
from vistrain.models.registry import ensemble_members
from vistrain.progress import Reporter
from vistrain.training.device import model_device, to_device
from vistrain.training.feature_cache import FeatureCache
from vistrain.training.pixels import decode_all


def onnx_session(backbone: nn.Module, name: str, prep: Preprocessing, cache_dir: Path | None):
    """An ONNX Runtime session running ``backbone`` at ``prep.size`` (exported once, then cached).

    None when onnxruntime/onnx are not installed or the export fails: callers fall back to PyTorch.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    folder = Path(cache_dir) if cache_dir else Path(os.environ.get("TMPDIR", "/tmp")) / "vistrain-onnx"
    # The mean/std too: a member of an ensemble normalised another backbone's way is another graph.
    norm = hashlib.sha1(repr((prep.mean, prep.std)).encode()).hexdigest()[:8]
    path = folder / "onnx" / f"{name}-{prep.size}-{norm}-vistrain{__version__}-torch{torch.__version__.split('+')[0]}.onnx"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{uuid.uuid4().hex}.tmp")
        dummy = torch.zeros(1, 3, prep.size, prep.size)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(backbone.eval(), (dummy,), str(tmp), input_names=["x"], output_names=["features"],
                                  dynamic_axes={"x": {0: "n"}, "features": {0: "n"}}, opset_version=17, dynamo=False)
            os.replace(tmp, path)
        except Exception:  # noqa: BLE001 -- an exporter gap for some backbone only costs speed
            tmp.unlink(missing_ok=True)
            return None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = os.cpu_count() or 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def faster_copy(net: nn.Module, pixels: np.ndarray, prep: Preprocessing) -> nn.Module:
    """``net``'s faster inference copy (:func:`vistrain.models.inference.inference_copy`: the same
    outputs), checked on the first two of these ``N x S x S x 3`` uint8 pixels."""
    example = to_device(normalize(np.ascontiguousarray(pixels[:2]), prep), model_device(net))
    return inference_copy(net, example)[0]


@torch.inference_mode()
def extract_features(
    backbone: nn.Module,
    pixels: np.ndarray,
    prep: Preprocessing,
    batch_size: int | None = None,
    progress: Callable[[int], None] | None = None,
    session=None,
) -> np.ndarray:
    """Pooled features for ``N x S x S x 3`` uint8 pixels (float32, on the backbone's device without a session)."""
    backbone.eval()
    device = model_device(backbone)
    batch_size = batch_size or inference_batch_size(prep.size)  # a big batch buys no speed on a CPU, only memory
    if session is None and len(pixels) >= WORTH_IT:
        backbone = faster_copy(backbone, pixels, prep)
    out = []
    for start in range(0, len(pixels), batch_size):
        chunk = pixels[start : start + batch_size]
        x = normalize(np.ascontiguousarray(chunk), prep)
        if session is not None:
            out.append(session.run(None, {"x": x.contiguous().numpy()})[0])
        else:
            out.append(backbone(to_device(x, device)).float().cpu().numpy())
        if progress:
            progress(len(chunk))
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def feature_caches(root: Path | None, backbone: str, prep: Preprocessing) -> list[FeatureCache]:
    """One feature cache per member of ``backbone`` (one for a single backbone), each under the
    member's own name, so runs of a member alone and ensembles containing it share features."""
    return [FeatureCache(root, name, prep) for name in ensemble_members(backbone)]


def backbone_features(ui: Reporter, backbone, records, prep: Preprocessing, caches: list[FeatureCache],
                      pixels: np.ndarray | None = None, pixel_cache: PixelCache | None = None,
                      split: str | None = None) -> np.ndarray:
    """:func:`cached_features` of ``backbone``; for an ensemble (``caches`` from :func:`feature_caches`),
    each member's features side by side, from pixels decoded once for all members that need them."""
    if len(caches) == 1:
        return cached_features(ui, backbone, records, prep, caches[0], pixels, pixel_cache)
    return members_features(ui, backbone.members, records, prep, caches, pixels, pixel_cache, split)


def members_features(ui: Reporter, modules, records, prep: Preprocessing, caches: list[FeatureCache],
                     pixels: np.ndarray | None = None, pixel_cache: PixelCache | None = None,
                     split: str | None = None) -> np.ndarray:
    """Each backbone's :func:`cached_features` (one cache per module), side by side, from pixels
    decoded once for all the backbones that need them. ``split`` names the records in the log line
    (each split's features get their own progress bar)."""
    keys = [r.sha1 for r in records]
    needs = [len(c.get(keys)[1]) for c in caches]
    if pixels is None and sum(map(bool, needs)) > 1:
        with ui.stage("decode", len(records)) as advance:
            pixels, _ = decode_all([r.path for r in records], prep, progress=advance, cache=pixel_cache,
                                   keys=keys if pixel_cache is not None else None)
    parts = []
    for member, cache, need in zip(modules, caches, needs):
        if need:
            ui.log(f"  features of {cache.backbone}: {need} {split + ' ' if split else ''}images")
        parts.append(cached_features(ui, member, records, prep, cache, pixels, pixel_cache))
    return np.hstack(parts)


def cached_features(ui: Reporter, backbone, records, prep: Preprocessing, cache: FeatureCache,
                    pixels: np.ndarray | None = None, pixel_cache: PixelCache | None = None) -> np.ndarray:
    """Features of ``records``: from the cache where known, else decoded (unless given) and computed.

    Decoding goes through ``pixel_cache`` when given, so the images decoded here are not decoded again.
    """
    keys = [r.sha1 for r in records]
    features, missing = cache.get(keys)
    if not missing:
        return features
    # ONNX Runtime runs on the CPU here: a backbone on a GPU computes its features itself.
    on_cpu = model_device(backbone).type == "cpu"
    session = onnx_session(backbone, cache.backbone, prep, cache.root) if on_cpu else None
    if pixels is None:
        with ui.stage("decode", len(missing)) as advance:
            pixels, _ = decode_all([records[i].path for i in missing], prep, progress=advance, cache=pixel_cache,
                                   keys=[keys[i] for i in missing] if pixel_cache is not None else None)
    elif len(missing) < len(records):
        pixels = pixels[missing]  # a copy: only when some are cached (an ensemble's members share the rest)
    with ui.stage("features", len(missing)) as advance:
        new = extract_features(backbone, pixels, prep, progress=advance, session=session)
    cache.put([keys[i] for i in missing], new)
    if features is None:
        return new
    features[missing] = new
    return features

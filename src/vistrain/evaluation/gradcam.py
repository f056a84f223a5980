"""Grad-CAM (Selvaraju et al., 2017) in PyTorch, on the backbone's declared last convolutional stage.

Hooks capture that stage's activations and the gradient of the chosen class's logit with respect
to them; channel weights are the spatially averaged gradients. For vistrain's GAP + linear heads
this equals the class activation map of :func:`vistrain.heatmap.cam_from_features` (see there);
computing it by gradients keeps it right for any head.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vistrain.data.transforms import normalize
from vistrain.heatmap import normalise_cam, write_heatmap_files
from vistrain.models.classifier import ImageClassifier
from vistrain.models.registry import get_backbone
from vistrain.training.device import model_device, to_device


def cam_module(model: ImageClassifier, backbone: str) -> torch.nn.Module:
    name = get_backbone(backbone).cam_layer
    try:
        return model.backbone.get_submodule(name)
    except AttributeError as exc:
        raise ValueError(f"backbone {backbone!r}: its declared Grad-CAM layer {name!r} does not exist") from exc


def grad_cam(model: ImageClassifier, backbone: str, pixels: np.ndarray, prep, classes: np.ndarray,
             batch_size: int = 16) -> np.ndarray:
    """``N x h x w`` maps in [0, 1] for ``N x size x size x 3`` uint8 pixels and one class each."""
    layer = cam_module(model, backbone)
    captured: dict[str, torch.Tensor] = {}

    def keep(_module, _inputs, output):
        # A frozen model gives an output without grad: make it a leaf that records one.
        act = output if output.requires_grad else output.detach().requires_grad_(True)
        act.retain_grad()
        captured["act"] = act
        return act

    handle = layer.register_forward_hook(keep)
    device = model_device(model)
    was_training = model.training
    model.eval()
    maps = []
    try:
        for start in range(0, len(pixels), batch_size):
            x = to_device(normalize(np.ascontiguousarray(pixels[start : start + batch_size]), prep), device)
            with torch.enable_grad():
                logits = model(x)
                idx = torch.as_tensor(np.asarray(classes[start : start + batch_size]), dtype=torch.long, device=device)
                model.zero_grad(set_to_none=True)
                logits.gather(1, idx[:, None]).sum().backward()
            act, grad = captured["act"].detach(), captured["act"].grad
            weights = grad.mean(dim=(2, 3), keepdim=True)
            cams = (weights * act).sum(dim=1).float().cpu().numpy()
            maps.extend(normalise_cam(c) for c in cams)
    finally:
        handle.remove()
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return np.stack(maps) if maps else np.zeros((0, 1, 1), dtype=np.float32)


def write_heatmaps(predictor, rows: list[dict], folder: Path, progress=None, batch_size: int = 16) -> list[Path]:
    """For each classified row, ``folder/<file stem>.<predicted class>.png``: the model's view of
    the photo with the Grad-CAM of its answer over it. Existing files are never overwritten."""
    cfg = predictor.config
    return write_heatmap_files(
        rows, folder, cfg.preprocessing, predictor.classes,
        lambda pixels, targets: grad_cam(predictor.model, cfg.backbone, pixels, cfg.preprocessing, targets, batch_size),
        progress, batch_size)

"""Batch norm folded into convolutions for inference: the same outputs, the original untouched,
and a model whose layers do not run in registration order left as it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from vistrain.data.images import load_rgb
from vistrain.data.transforms import to_model_pixels
from vistrain.evaluation.gradcam import grad_cam
from vistrain.evaluation.predictor import Predictor
from vistrain.models.classifier import load_model
from vistrain.models.folding import fold_batchnorm
from vistrain.models.registry import create_backbone


def _randomise_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Fresh batch norms are the identity (mean 0, variance 1): give them statistics to fold."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    return model.eval()


def _norms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("name", ["efficientnet_lite0", "mobilenet_v2", "efficientnet_lite0+efficientnet_lite1"])
def test_every_backbone_folds_all_its_norms_with_the_same_outputs(name):
    model = _randomise_norms(create_backbone(name, pretrained=False))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    folded, count = fold_batchnorm(model, x)
    assert count == _norms(model) > 0 and _norms(folded) == 0
    y = torch.randn(3, 3, 96, 80, generator=torch.Generator().manual_seed(2))  # another input than the check's
    with torch.inference_mode():
        want, got = model(y), folded(y)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # The original keeps its norms and its weights: a run's model may still be trained or saved.
    assert _norms(model) == count
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


class _OutOfOrder(nn.Module):
    """Registered conv then norm, but the forward pass normalises before convolving."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        return self.conv(self.bn(x))


def test_a_model_whose_forward_is_not_its_registration_order_is_left_as_it_was():
    model = _randomise_norms(_OutOfOrder())
    folded, count = fold_batchnorm(model, torch.randn(2, 3, 8, 8))
    assert count == 0 and folded is model and _norms(folded) == 1


def test_a_saved_run_loads_folded_with_the_same_answers_and_heat_maps(trained_run):
    run, data = trained_run
    plain, cfg = load_model(run)
    predictor = Predictor.from_folder(run)
    assert _norms(plain) > 0 and _norms(predictor.model) == 0
    reference = Predictor(plain, cfg)
    paths = sorted(data.rglob("*.png"))[:6]
    np.testing.assert_allclose(predictor.logits_from_paths(paths)[0], reference.logits_from_paths(paths)[0],
                               rtol=1e-4, atol=1e-4)
    # Grad-CAM's declared layer is still there and sees the same activations.
    pixels = np.stack([to_model_pixels(load_rgb(p), cfg.preprocessing) for p in paths[:2]])
    targets = np.array([0, 1])
    np.testing.assert_allclose(grad_cam(predictor.model, cfg.backbone, pixels, cfg.preprocessing, targets),
                               grad_cam(plain, cfg.backbone, pixels, cfg.preprocessing, targets), atol=1e-3)

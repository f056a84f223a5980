"""A saved network's faster inference copy (batch norm folded, "same" padding planned for the input
size): the same outputs at that size and at others, the original untouched, and a model whose
layers do not run in registration order left as it was."""

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
from vistrain.models.inference import SameConv, inference_copy, same_conv2d
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
def test_every_backbone_gets_a_faster_copy_with_the_same_outputs(name):
    model = _randomise_norms(create_backbone(name, pretrained=False))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    fast, changes = inference_copy(model, x)
    assert changes["batch_norms_folded"] == _norms(model) > 0 and _norms(fast) == 0
    same = sum(type(m).__name__ == "Conv2dSame" for m in model.modules())
    assert changes["same_convs_padded"] == same == sum(isinstance(m, SameConv) for m in fast.modules())
    assert same > 0 or name == "mobilenet_v2"  # each Lite has five: its stem and strided depthwise convs
    # Another input than the check's, and sizes whose "same" padding differs (odd, non-square).
    for shape in [(3, 3, 64, 64), (2, 3, 61, 77), (1, 3, 96, 80)]:
        y = torch.randn(*shape, generator=torch.Generator().manual_seed(2))
        with torch.inference_mode():
            want, got = model(y), fast(y)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # The original keeps its norms and its weights: a run's model may still be trained or saved.
    assert _norms(model) == changes["batch_norms_folded"]
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("size", [8, 9, 10, 11])
@pytest.mark.parametrize(("kernel", "stride"), [(3, 2), (5, 2), (3, 1), (4, 2)])
def test_same_conv2d_is_tensorflow_same_padding_with_the_same_gradients(size, kernel, stride):
    from timm.layers.conv2d_same import conv2d_same

    torch.manual_seed(size * kernel)
    weight = torch.randn(4, 2, kernel, kernel, requires_grad=True)
    bias = torch.randn(4, requires_grad=True)
    x = torch.randn(2, 4, size, size + 1, requires_grad=True)  # odd and even sides in one input
    want = conv2d_same(x, weight, bias, (stride, stride), (0, 0), (1, 1), 2)
    grads_want = torch.autograd.grad(want.square().sum(), (x, weight, bias))
    got = same_conv2d(x, weight, bias, (stride, stride), 2)
    grads_got = torch.autograd.grad(got.square().sum(), (x, weight, bias))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for g, w in zip(grads_got, grads_want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)


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
    fast, changes = inference_copy(model, torch.randn(2, 3, 8, 8))
    assert changes == {"batch_norms_folded": 0, "same_convs_padded": 0} and fast is model and _norms(fast) == 1


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


def test_a_network_already_folded_for_training_is_used_as_it_is():
    from vistrain.training.fold import folded_batchnorm

    model = _randomise_norms(create_backbone("efficientnet_lite0", pretrained=False))
    x = torch.randn(2, 3, 64, 64)
    with folded_batchnorm(model) as n:
        assert n > 0
        fast, changes = inference_copy(model, x)
        # Training's fold already computes each norm inside its convolution, "same" ones included.
        assert fast is model and changes == {"batch_norms_folded": 0, "same_convs_padded": 0}

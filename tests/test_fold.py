"""Frozen BatchNorm folded into its convolution while fine-tuning: the same outputs and gradients for
every registered backbone, fewer saved activations, and the model exactly as it was afterwards."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vistrain.models.registry import BACKBONES, create_backbone
from vistrain.training.fold import (
    ClampAct,
    FoldedConv,
    FoldedNorm,
    fold_pairs,
    folded_batchnorm,
)


def frozen_bn_net(name: str) -> nn.Module:
    torch.manual_seed(0)
    net = create_backbone(name, pretrained=False)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            # Statistics and affine terms far from the identity, so a wrong fold shows.
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.3, 3.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
    net.train()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    return net


def outputs_and_grads(net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    net.zero_grad(set_to_none=True)
    out = net(x)
    (out.float() ** 2).mean().backward()
    return out.detach(), {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_folded_backbone_gives_the_same_outputs_and_gradients(name):
    # In float64: folding re-associates float sums, and in float32 a value that then rounds across a
    # ReLU6 edge flips that element's gradient; in a randomly initialised network such flips sum to a
    # few percent in the first layers' gradients (timm 1.0.31's initialisation: 3% in float32, 4e-15
    # in float64), noise that a tolerance would either hide a wrong fold behind or fail on.
    net = frozen_bn_net(name).double()
    x = torch.randn(3, 3, 96, 96, dtype=torch.float64)
    keys = list(net.state_dict())
    ref_out, ref_grads = outputs_and_grads(net, x)
    with folded_batchnorm(net) as n:
        assert n >= 30  # every conv + BatchNorm pair of these networks
        assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
        assert list(net.state_dict()) == keys  # checkpoints and the optimizer see the same tensors
        out, grads = outputs_and_grads(net, x)
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-10)
    assert grads.keys() == ref_grads.keys()
    for k in grads:
        err = (grads[k] - ref_grads[k]).norm() / ref_grads[k].norm().clamp_min(1e-30)
        assert err < 1e-9, (k, float(err))
    # The originals are back, with the BatchNorm modules themselves.
    assert list(net.state_dict()) == keys
    assert not any(isinstance(m, FoldedConv | FoldedNorm | ClampAct) for m in net.modules())
    assert len(fold_pairs(net)) == n


def saved_bytes(net: nn.Module, x: torch.Tensor) -> int:
    """Bytes autograd keeps for the backward pass (distinct storages)."""
    seen: dict[int, int] = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(x).sum().backward()
    return sum(seen.values())


def test_folding_keeps_fewer_activations_for_backward():
    net = frozen_bn_net("efficientnet_lite0")
    x = torch.randn(4, 3, 128, 128)
    plain = saved_bytes(net, x)
    with folded_batchnorm(net):
        folded = saved_bytes(net, x)
    # The conv output BatchNorm kept and the input copy in-place ReLU6 kept are gone, and so is the
    # padded copy of each "same" convolution's input (same_conv2d): measured 0.53x, 0.63x with timm's
    # padding (the rest: each layer's input, plus the folded weights).
    assert folded < 0.58 * plain


def test_modules_come_back_after_an_error_and_nothing_folds_when_disabled():
    net = frozen_bn_net("efficientnet_lite0")
    before = [type(m) for m in net.modules()]
    with pytest.raises(RuntimeError, match="stop"), folded_batchnorm(net):
        raise RuntimeError("stop")
    assert [type(m) for m in net.modules()] == before
    with folded_batchnorm(net, enabled=False) as n:
        assert n == 0 and [type(m) for m in net.modules()] == before


def test_optimizer_steps_reach_the_original_weights():
    net = frozen_bn_net("efficientnet_lite0")
    conv = net.conv_head
    w0 = conv.weight.detach().clone()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with folded_batchnorm(net):
        net(torch.randn(2, 3, 64, 64)).pow(2).mean().backward()
        opt.step()
    assert net.conv_head is conv and not torch.equal(conv.weight, w0)

"""Frozen BatchNorm folded into the convolution before it, while fine-tuning.

With BatchNorm statistics frozen (``FinetuneConfig.freeze_bn``), each BatchNorm is a fixed per-channel
affine map: y = x * s + (beta - mean * s), s = gamma / sqrt(var + eps). Computing it inside the
convolution, conv(x, W * s) + (beta - mean * s), gives the same function and the same gradients for
W, gamma and beta, but autograd no longer keeps the convolution's output for BatchNorm's backward:
in EfficientNet-Lite (conv -> BatchNorm -> in-place ReLU6) that is one saved activation per
convolution fewer. With ReLU/ReLU6 also saving their output (below), one training step of batch 32
at 288 px on 2 CPU cores peaked at 1.85 GB instead of 2.19 GB, at the same step time. timm's "same"
convolutions then run as :func:`vistrain.models.inference.same_conv2d`, which keeps no padded copy
of their input: at the same step time, a step of batch 32 at 288 px with the bottom frozen (the
default) peaked at 1.35 GB instead of 1.41 GB, and two steps at 352 px with every layer trained
2.17 GB above the start instead of 2.88 GB (2026-11-24).

The weights, their names and the optimizer's parameters stay as they are: the folded modules hold
the very same tensors under the same state-dict keys, and ``folded_batchnorm`` puts the original
modules back when it exits.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from vistrain.models.inference import (
    Conv2dSame,
    SameConv,
    fold_pairs,
    norm_scale_shift,
    same_conv2d,
)

try:
    from timm.layers.conv2d_same import conv2d_same
except ImportError:  # pragma: no cover - timm is a dependency; kept importable without it
    conv2d_same = None


class FoldedConv(nn.Module):
    """A convolution followed by a frozen BatchNorm, computed as one convolution."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d):
        super().__init__()
        self.weight = conv.weight  # the same Parameter: the optimizer keeps updating it
        self.bias = conv.bias
        self.parts = (conv, bn)  # a tuple, so neither is registered twice in the state dict

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, bn = self.parts
        scale, shift = norm_scale_shift(bn)
        weight = self.weight * scale.reshape(-1, 1, 1, 1)
        bias = shift if self.bias is None else shift + self.bias * scale
        if SameConv.fits(conv):  # without timm's padded copy of the input: same sums, less memory
            return same_conv2d(x, weight, bias, conv.stride, conv.groups)
        if conv2d_same is not None and isinstance(conv, Conv2dSame):
            return conv2d_same(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
        return conv._conv_forward(x, weight, bias)


class _ClampSavingOutput(torch.autograd.Function):
    """ReLU/ReLU6 whose backward reads its output, not its input. The output is what the next
    convolution keeps anyway, so the activation adds nothing to the saved tensors; PyTorch's in-place
    ``hardtanh_`` instead keeps a clone of its input."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, lo: float, hi: float | None) -> torch.Tensor:
        y = x.clamp(lo, hi)
        ctx.save_for_backward(y)
        ctx.lo, ctx.hi = lo, hi
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (y,) = ctx.saved_tensors
        # PyTorch's own kernels, given the output: y is strictly inside the clamp exactly where x is,
        # so the gradient (zero at the edges) is the same.
        if ctx.hi is None:
            return torch.ops.aten.threshold_backward(grad, y, ctx.lo), None, None
        return torch.ops.aten.hardtanh_backward(grad, y, ctx.lo, ctx.hi), None, None


class ClampAct(nn.Module):
    """nn.ReLU / nn.ReLU6 computed by ``_ClampSavingOutput`` (same values, same gradients)."""

    def __init__(self, original: nn.Module):
        super().__init__()
        self.original = original
        self.lo, self.hi = (0.0, None) if isinstance(original, nn.ReLU) else (original.min_val, original.max_val)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled() or not x.requires_grad:
            return x.clamp(self.lo, self.hi)
        return _ClampSavingOutput.apply(x, self.lo, self.hi)


def _act(module: nn.Module) -> nn.Module:
    return ClampAct(module) if type(module) in (nn.ReLU, nn.ReLU6) else module


class FoldedNorm(nn.Module):
    """What is left of a BatchNorm folded into the convolution before it: timm's fused activation
    (``BatchNormAct2d.drop``/``.act``) if any. It keeps the BatchNorm's tensors under their keys."""

    def __init__(self, bn: nn.BatchNorm2d):
        super().__init__()
        self.weight, self.bias = bn.weight, bn.bias
        self.register_buffer("running_mean", bn.running_mean)
        self.register_buffer("running_var", bn.running_var)
        self.register_buffer("num_batches_tracked", bn.num_batches_tracked)
        self.drop = getattr(bn, "drop", nn.Identity())
        self.act = _act(getattr(bn, "act", nn.Identity()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(x))


def _swaps(model: nn.Module, pairs) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, name, replacement) for each folded pair, and for free-standing ReLU/ReLU6 modules
    (torchvision's conv -> BatchNorm -> ReLU6 sequences)."""
    swaps = []
    for parent, a, b in pairs:
        conv, bn = parent._modules[a], parent._modules[b]
        swaps += [(parent, a, FoldedConv(conv, bn)), (parent, b, FoldedNorm(bn))]
    if pairs:
        for parent in model.modules():
            if isinstance(parent, nn.BatchNorm2d):
                continue  # a folded BatchNorm's own activation is already in its FoldedNorm
            for name, child in parent._modules.items():
                if type(child) in (nn.ReLU, nn.ReLU6):
                    swaps.append((parent, name, ClampAct(child)))
    return swaps


@contextlib.contextmanager
def folded_batchnorm(model: nn.Module, enabled: bool = True) -> Iterator[int]:
    """Inside: every foldable conv + BatchNorm pair of ``model`` computed as one convolution (the
    BatchNorms must be frozen: their statistics are read, never updated), and ReLU/ReLU6 saving their
    output for backward. Yields how many pairs were folded; the original modules are back on exit,
    even after an exception or Ctrl-C."""
    pairs = fold_pairs(model) if enabled else []
    swaps = _swaps(model, pairs)
    originals = [(parent, name, parent._modules[name]) for parent, name, _ in swaps]
    try:
        for parent, name, new in swaps:
            parent._modules[name] = new
        yield len(pairs)
    finally:
        for parent, name, old in reversed(originals):
            parent._modules[name] = old


"""A saved network made faster for inference on a CPU, with the same outputs.

Two rewrites that ONNX Runtime makes itself and PyTorch's eager CPU path does not, measured on
Lite0 at 352 px (``benchmarks/latency.py``):

- Batch norm folded into the convolution before it: in eval mode it is a fixed per-channel scale
  and shift. It took 31% of a forward pass.
- TensorFlow-style "same" convolutions (timm's ``Conv2dSame``, five in each EfficientNet-Lite)
  padded by the convolution itself, instead of by a separate pad that writes a padded copy of the
  input (:func:`same_conv2d`): a further 1.2x.

Together a batch of 16 runs 1.7x (1 thread) to 1.9x (2 threads) faster. :func:`inference_copy`
checks the copy against the original on one input and gives back the original if they differ
beyond float rounding.
"""

from __future__ import annotations

import copy
import itertools
import math

import torch
from torch import nn

try:  # timm's TensorFlow-style "same" padding convolutions (the EfficientNet-Lite stems and strided convs)
    from timm.layers.conv2d_same import Conv2dSame
except ImportError:  # pragma: no cover - timm is a dependency; kept importable without it
    Conv2dSame = nn.Conv2d

TOLERANCE = 1e-3  # of the largest output's magnitude; float32 reordering differs by ~1e-6
# Making and checking a copy costs about five images' forward passes and saves about half of each
# image's: worth it from about a dozen images; callers with a batch of images or more use it.
WORTH_IT = 32


def norm_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """A BatchNorm in eval mode as y = x * scale + shift (per channel)."""
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


def foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (type(conv) in (nn.Conv2d, Conv2dSame) and conv.padding_mode == "zeros"
            and isinstance(bn, nn.BatchNorm2d) and bn.affine and bn.track_running_stats
            and bn.running_mean is not None and conv.out_channels == bn.num_features)


def fold_pairs(model: nn.Module) -> list[tuple[nn.Module, str, str]]:
    """(parent, conv name, BatchNorm name) for each convolution registered directly before a BatchNorm
    of its width. Registration order is call order in timm's EfficientNets and torchvision's
    MobileNetV2 (tests/test_fold.py checks outputs and gradients for every registered backbone;
    :func:`inference_copy` checks its own result)."""
    pairs = []
    for parent in model.modules():
        names = list(parent._modules)
        for a, b in itertools.pairwise(names):
            if foldable(parent._modules[a], parent._modules[b]):
                pairs.append((parent, a, b))
    return pairs


def _after_norm(bn: nn.BatchNorm2d) -> nn.Module | None:
    """What is left of ``bn`` once its normalisation is folded away, or None if that is unknown."""
    if type(bn) is nn.BatchNorm2d:
        return nn.Identity()
    drop, act = getattr(bn, "drop", None), getattr(bn, "act", None)
    if type(bn).__name__ == "BatchNormAct2d" and isinstance(drop, nn.Module) and isinstance(act, nn.Module):
        return nn.Sequential(drop, act)  # timm: norm, then dropout (idle in eval), then activation
    return None


def _fold_norms(model: nn.Module) -> int:
    """Folds each eval-mode BatchNorm into the convolution before it, in place; how many."""
    folded = 0
    with torch.no_grad():
        for parent, a, b in fold_pairs(model):
            conv, bn = parent._modules[a], parent._modules[b]
            rest = _after_norm(bn)
            if rest is None:
                continue
            scale, shift = norm_scale_shift(bn)
            bias = shift if conv.bias is None else shift + conv.bias * scale
            conv.weight = nn.Parameter((conv.weight * scale.reshape(-1, 1, 1, 1)).contiguous(),
                                       requires_grad=conv.weight.requires_grad)
            conv.bias = nn.Parameter(bias, requires_grad=conv.weight.requires_grad)
            parent._modules[b] = rest
            folded += 1
    return folded


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's "same" padding (before, after) of one axis, as timm's ``pad_same`` computes it."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def same_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: tuple[int, int],
                groups: int) -> torch.Tensor:
    """TensorFlow's "same" convolution (timm's ``conv2d_same``, dilation 1), padded by the convolution.

    TensorFlow pads one more after than before when the total is odd, which a convolution's own
    (symmetric) padding cannot do, so timm first writes a padded copy of the input. A kernel with
    one more row (column) of zeros in front, padded by the larger amount on both sides, computes
    exactly the same sums without that copy; the kernel's copy is tiny. Gradients flow to
    ``weight`` through the pad.
    """
    (top, bottom) = _same_padding(x.shape[-2], weight.shape[-2], stride[0])
    (left, right) = _same_padding(x.shape[-1], weight.shape[-1], stride[1])
    if bottom > top or right > left:
        weight = nn.functional.pad(weight, (right - left, 0, bottom - top, 0))
    return nn.functional.conv2d(x, weight, bias, stride, (bottom, right), 1, groups)


class SameConv(nn.Module):
    """timm's ``Conv2dSame`` computed by :func:`same_conv2d`, with the same tensors."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.weight, self.bias = conv.weight, conv.bias
        self.stride, self.groups = conv.stride, conv.groups

    @staticmethod
    def fits(conv: nn.Module) -> bool:
        return (Conv2dSame is not nn.Conv2d and type(conv) is Conv2dSame and conv.padding_mode == "zeros"
                and conv.dilation == (1, 1) and conv.padding == (0, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return same_conv2d(x, self.weight, self.bias, self.stride, self.groups)


def _pad_inside(model: nn.Module) -> int:
    """Replaces each "same" convolution of ``model`` by a :class:`SameConv`; how many."""
    same = [name for name, m in model.named_modules() if SameConv.fits(m)]
    for name in same:
        parent, _, attr = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, attr, SameConv(getattr(owner, attr)))
    return len(same)


def inference_copy(model: nn.Module, example: torch.Tensor) -> tuple[nn.Module, dict[str, int]]:
    """A faster copy of ``model`` (in eval mode), and what changed.

    ``model`` itself is untouched. If the copy's output on ``example`` differs from the original's
    beyond float rounding, the original comes back, with nothing changed: an answer must never
    depend on this.
    """
    model = model.eval()
    if not fold_pairs(model) and not any(SameConv.fits(m) for m in model.modules()):
        return model, {"batch_norms_folded": 0, "same_convs_padded": 0}  # e.g. already folded for training
    fast = copy.deepcopy(model)
    changes = {"batch_norms_folded": _fold_norms(fast)}
    changes["same_convs_padded"] = _pad_inside(fast)
    if not any(changes.values()):
        return model, changes
    with torch.inference_mode():
        want, got = model(example), fast(example)
    scale = want.abs().max().clamp_min(1.0)
    if got.shape != want.shape or not bool(((got - want).abs().max() / scale) <= TOLERANCE):
        return model, dict.fromkeys(changes, 0)
    return fast, changes

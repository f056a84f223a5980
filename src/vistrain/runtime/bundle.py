"""The export folder's description, ``export.json``: everything a torch-free predictor needs to
turn a photo into the same input the model was trained on, and to read its outputs."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from vistrain.data.transforms import Preprocessing

EXPORT_FILE = "export.json"
HEAD_FILE = "head.safetensors"
FORMAT = "vistrain-export"
FORMAT_VERSION = 1
VARIANTS = ("fp32", "int8")


class ExportFolderError(ValueError):
    """A folder that is not a usable vistrain export; the message names the file and the reason."""


@dataclass
class ExportInfo:
    """What ``export.json`` holds. ``models`` maps a variant (fp32, int8) to its file and figures."""

    classes: list[str]
    preprocessing: Preprocessing
    backbone: str
    temperature: float = 1.0
    unsure_threshold: float | None = None
    models: dict[str, dict] = field(default_factory=dict)
    default: str = "fp32"
    extra: dict = field(default_factory=dict)  # source run, versions, validation figures

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "classes": list(self.classes),
            "preprocessing": self.preprocessing.to_dict(),
            "backbone": self.backbone,
            "temperature": self.temperature,
            "unsure_threshold": self.unsure_threshold,
            "inputs": {"pixels": "N x 3 x size x size float32, (RGB/255 - mean) / std"},
            "outputs": {"logits": "N x classes", "features": "N x C x h x w, the last convolutional stage"},
            "head": HEAD_FILE,
            "models": self.models,
            "default": self.default,
            **self.extra,
        }

    @classmethod
    def from_dict(cls, d: dict) -> ExportInfo:
        known = {"format", "format_version", "classes", "preprocessing", "backbone", "temperature",
                 "unsure_threshold", "inputs", "outputs", "head", "models", "default"}
        return cls(
            classes=list(d["classes"]),
            preprocessing=Preprocessing.from_dict(d["preprocessing"]),
            backbone=str(d.get("backbone", "")),
            temperature=float(d.get("temperature") or 1.0),
            unsure_threshold=None if d.get("unsure_threshold") is None else float(d["unsure_threshold"]),
            models=dict(d.get("models", {})),
            default=str(d.get("default", "fp32")),
            extra={k: v for k, v in d.items() if k not in known},
        )

    def write(self, folder: Path) -> Path:
        path = Path(folder) / EXPORT_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path


def find_export(folder: Path | str) -> Path:
    """The export folder for ``folder``: itself when it holds export.json, else ``folder/export``."""
    folder = Path(folder)
    for candidate in (folder, folder / "export"):
        if (candidate / EXPORT_FILE).is_file():
            return candidate
    if (folder / "model.safetensors").is_file():
        raise ExportFolderError(f"{folder}: a run without an ONNX export; run `vistrain export {folder}` first")
    if not folder.exists():
        raise ExportFolderError(f"{folder}: no such folder")
    raise ExportFolderError(f"{folder}: not a vistrain export (no {EXPORT_FILE} here or in {folder / 'export'})")


def read_export(folder: Path | str) -> tuple[Path, ExportInfo]:
    folder = find_export(folder)
    path = folder / EXPORT_FILE
    try:
        d = json.loads(path.read_text())
        if d.get("format") != FORMAT:
            raise ValueError(f"format is {d.get('format')!r}, not {FORMAT!r}")
        if int(d.get("format_version", 0)) > FORMAT_VERSION:
            raise ValueError(f"format version {d['format_version']} is newer than this vistrain reads ({FORMAT_VERSION})")
        info = ExportInfo.from_dict(d)
    except (ValueError, KeyError, TypeError) as exc:
        raise ExportFolderError(f"{path}: unreadable export description ({exc})") from exc
    if not info.models:
        raise ExportFolderError(f"{path}: lists no model files")
    _check_fresh(folder, info)
    return folder, info


def weights_digest(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_fresh(folder: Path, info: ExportInfo) -> None:
    """An export inside a run folder must be of that run's current model: after training again into
    the same run folder, ``vistrain serve RUN`` would otherwise serve the old model's ONNX file (with
    the old temperature and threshold) without a word. A copied run (``cp -r runs/a runs/b``, then
    b trained again) is checked the same way, by the weights' digest rather than the path it was
    exported from. An export outside any run is a deployed copy, complete in itself, and is not checked."""
    digest = info.extra.get("source_weights_sha256")
    run = folder.parent
    weights = run / "model.safetensors"
    if not digest or not weights.is_file() or not (run / "config.json").is_file():
        return
    if weights_digest(weights) != digest:
        raise ExportFolderError(f"{folder}: an export of an earlier model of {run} ({weights} has changed since: "
                                f"trained again?); run `vistrain export {run}` to export the current one")
    try:
        config = json.loads((run / "config.json").read_text())
    except (OSError, ValueError):
        return
    # `vistrain report` refits these and stores them in the run; predict would then disagree with serve.
    now = (float(config.get("temperature") or 1.0), config.get("unsure_threshold"))
    if now != (info.temperature, info.unsure_threshold):
        raise ExportFolderError(f"{folder}: exported with temperature {info.temperature:g} and unsure threshold "
                                f"{info.unsure_threshold}, but {run}/config.json now has {now[0]:g} and {now[1]} "
                                f"(refitted by `vistrain report`?); run `vistrain export {run}` again")

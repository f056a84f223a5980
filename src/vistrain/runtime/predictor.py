"""The torch-free predictor: an export folder in, probabilities (and heat maps) out.

Needs only onnxruntime, numpy and Pillow (plus safetensors' numpy reader for the head weights).
Preprocessing is the training code itself (:func:`load_rgb` -> :func:`to_model_pixels` ->
:func:`normalize_array`), so an image reaches the network as the same numbers in every stage.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from vistrain.data.images import (
    DEFAULT_MAX_PIXELS,
    decode_with_header,
    load_rgb,
)
from vistrain.data.transforms import normalize_array, to_model_pixels
from vistrain.familiarity import Familiarity, pooled
from vistrain.heatmap import cam_from_features
from vistrain.memory import inference_batch_size
from vistrain.prediction import (  # Prediction, softmax: re-exported
    Prediction,
    outputs_over_files,
    predictions,
    softmax,
)
from vistrain.runtime.bundle import (
    HEAD_FILE,
    VARIANTS,
    ExportFolderError,
    ExportInfo,
    read_export,
)


class OnnxPredictor:
    """The same interface as the PyTorch ``Predictor`` (``classes``, ``probabilities_from_pixels``,
    ``predict_paths``), on ONNX Runtime; ``features_from_pixels`` and ``heatmap`` add the CAM."""

    def __init__(self, folder: Path, info: ExportInfo, variant: str, threads: int | None = None,
                 batch_size: int | None = None):
        import onnxruntime as ort
        from safetensors.numpy import load_file

        if variant not in info.models:
            raise ExportFolderError(f"{folder}: no {variant} model in this export (has: {', '.join(info.models)})")
        self.folder = folder
        self.info = info
        self.variant = variant
        self.batch_size = batch_size or inference_batch_size(info.preprocessing.size)
        self.model_path = folder / info.models[variant]["file"]
        if not self.model_path.is_file():
            raise ExportFolderError(f"{self.model_path}: model file missing")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or os.cpu_count() or 1
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.model_path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise ExportFolderError(f"{self.model_path}: ONNX Runtime cannot load it ({exc})") from exc
        head = folder / HEAD_FILE
        self.head_weight = load_file(str(head))["weight"] if head.is_file() else None
        self.familiarity = Familiarity.load(folder)
        own = info.models[variant].get("familiar_threshold")
        if self.familiarity is not None and own is not None:  # int8 features: the export fitted its own
            self.familiarity = self.familiarity.with_threshold(own)

    @classmethod
    def from_folder(cls, folder: Path | str, variant: str = "auto", threads: int | None = None,
                    batch_size: int | None = None) -> OnnxPredictor:
        """``folder``: an export folder or a run folder holding ``export/``. ``variant``: fp32, int8 or
        auto (the export's default: int8 when it passed its accuracy check)."""
        if variant not in ("auto", *VARIANTS):
            raise ExportFolderError(f"variant {variant!r} is not one of auto, {', '.join(VARIANTS)}")
        found, info = read_export(folder)
        return cls(found, info, info.default if variant == "auto" else variant, threads, batch_size)

    @property
    def classes(self) -> list[str]:
        return self.info.classes

    @property
    def preprocessing(self):
        return self.info.preprocessing

    @property
    def temperature(self) -> float:
        return self.info.temperature

    @property
    def unsure_threshold(self) -> float | None:
        return self.info.unsure_threshold

    def outputs_from_pixels(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``N x S x S x 3`` uint8 -> (logits ``N x K``, feature maps ``N x C x h x w``)."""
        logits, feats = [], []
        for start in range(0, len(pixels), self.batch_size):
            x = normalize_array(pixels[start : start + self.batch_size], self.preprocessing)
            lo, fe = self.session.run(["logits", "features"], {"pixels": x})
            logits.append(lo)
            feats.append(fe)
        if not logits:
            return np.zeros((0, len(self.classes)), np.float32), np.zeros((0, 0, 0, 0), np.float32)
        return np.concatenate(logits), np.concatenate(feats)

    def logits_from_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return self.outputs_from_pixels(pixels)[0]

    def probabilities_from_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return softmax(self.logits_from_pixels(pixels), self.temperature)

    def heatmap(self, feature_map: np.ndarray, class_index: int) -> np.ndarray | None:
        """The class activation map (``h x w`` in [0, 1]) of one image's feature map for one class."""
        if self.head_weight is None:
            return None
        return cam_from_features(feature_map, self.head_weight[class_index])

    def pixels_from_file(self, path: Path | str) -> np.ndarray:
        prep = self.preprocessing
        return to_model_pixels(load_rgb(path, min_side=prep.size), prep)

    def pixels_from_bytes(self, data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
        """Uploaded bytes -> model pixels, decoded exactly as a file on disk; ImageError names ``name``."""
        prep = self.preprocessing
        img, _ = decode_with_header(name, min_side=prep.size, max_pixels=max_pixels, data=data)
        return to_model_pixels(img, prep)

    def view_outputs(self, pixels: np.ndarray, views: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """``N x views x K`` logits (view 1: the horizontal mirror, as the PyTorch predictor's
        ``view_logits``) and view 0's feature maps."""
        if views not in (1, 2):
            raise ValueError(f"views must be 1 (plain) or 2 (plain + mirror), got {views}")
        logits, feature_maps = self.outputs_from_pixels(pixels)
        if views == 2:
            mirrored = self.outputs_from_pixels(np.ascontiguousarray(pixels[:, :, ::-1]))[0]
            return np.stack([logits, mirrored], axis=1), feature_maps
        return logits[:, None], feature_maps

    def predict_paths(self, paths: list[str | Path], progress: Callable[[int], None] | None = None,
                      on_batch: Callable | None = None, tta: bool = False) -> list[Prediction]:
        """Decode (threads) and classify batch by batch; files that fail carry their reason. ``tta``:
        average each image's logits with its mirror image's.

        ``on_batch(paths, pixels, logits, feature_maps)``: called with each batch of decoded files,
        for work on the same outputs (heat maps) without decoding or running the model again."""
        logits, similarity, errors = self.outputs_from_paths(paths, progress, 2 if tta else 1, on_batch)
        return predictions(paths, logits, similarity, errors, self.temperature, self.familiarity)

    def outputs_from_paths(self, paths: list[str | Path], progress: Callable[[int], None] | None = None,
                           views: int = 1, on_batch: Callable | None = None
                           ) -> tuple[np.ndarray, np.ndarray | None, list[str | None]]:
        """``N x views x K`` logits (NaN where a file failed), each file's similarity to the training
        photos (NaN where it failed; None without the check) and each file's error or None."""
        return outputs_over_files(paths, self.pixels_from_file, self.batch_size, len(self.classes),
                                  lambda pixels: self.view_outputs(pixels, views),
                                  None if self.familiarity is None else self.similarity,
                                  progress, views, on_batch)

    def similarity(self, feature_maps: np.ndarray) -> np.ndarray | None:
        """Each image's similarity to the nearest training photo, from its feature map (None: no check)."""
        if self.familiarity is None or len(feature_maps) == 0:
            return None
        return self.familiarity.similarity(pooled(feature_maps))

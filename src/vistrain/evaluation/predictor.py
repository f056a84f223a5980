"""The PyTorch predictor: a saved model folder in, probabilities out; bad files reported, never fatal."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from vistrain.data.images import load_rgb
from vistrain.data.transforms import normalize, to_model_pixels
from vistrain.familiarity import Familiarity
from vistrain.memory import inference_batch_size
from vistrain.models.classifier import ImageClassifier, ModelConfig, load_model
from vistrain.models.inference import inference_copy
from vistrain.prediction import (  # Prediction, softmax: re-exported
    Prediction,
    outputs_over_files,
    predictions,
    softmax,
)
from vistrain.training.device import model_device, resolve_device, to_device


class Predictor:
    """``device``: "auto", "cpu" or "cuda" moves the model there; None leaves it where it is.
    Inference is float32 on every device (cuDNN's default TF32 convolutions make a GPU's logits
    differ slightly from the CPU's)."""

    def __init__(self, model: ImageClassifier, config: ModelConfig, batch_size: int | None = None,
                 device: str | torch.device | None = None, familiarity: Familiarity | None = None):
        if isinstance(device, str):
            device = resolve_device(device)
        self.model = model.eval().to(device, memory_format=torch.channels_last)
        self.device = model_device(self.model)
        self.config = config
        self.batch_size = batch_size or inference_batch_size(config.preprocessing.size)
        self.familiarity = familiarity

    @classmethod
    def from_folder(cls, folder: Path | str, batch_size: int | None = None, device: str | torch.device = "cpu") -> Predictor:
        """The run's network as a faster inference copy (``models.inference``): its ``model`` has no
        BatchNorm modules, so to train or save it further, take ``load_model(folder)`` instead."""
        model, cfg = load_model(folder)
        size = cfg.preprocessing.size
        # Norms folded, "same" convolutions padding themselves: the same outputs, 1.7-1.9x faster on CPU.
        example = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
        model, _ = inference_copy(model, example)
        return cls(model, cfg, batch_size, device, Familiarity.load(Path(folder)))

    @property
    def classes(self) -> list[str]:
        return self.config.classes

    @torch.inference_mode()
    def logits_from_pixels(self, pixels: np.ndarray, tta: bool = False) -> np.ndarray:
        """Logits of ``N x size x size x 3`` uint8 pixels; ``tta`` averages them with the mirror image's."""
        views = self.view_logits(pixels, 2 if tta else 1)
        return views.mean(axis=1)

    @torch.inference_mode()
    def view_logits(self, pixels: np.ndarray, views: int = 1) -> np.ndarray:
        """``N x views x classes`` logits: view 0 is the image, view 1 its horizontal mirror.

        Mirroring is the one augmentation that is label-preserving for photos in general and
        that every network here saw while fine-tuning; averaging logits keeps temperature
        scaling meaningful afterwards.
        """
        return self.view_outputs(pixels, views)[0]

    @torch.inference_mode()
    def view_outputs(self, pixels: np.ndarray, views: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`view_logits`, and the pooled features of view 0 (``N x D``) that gave them."""
        if views not in (1, 2):
            raise ValueError(f"views must be 1 (plain) or 2 (plain + mirror), got {views}")
        prep = self.config.preprocessing
        outs, feats = [], []
        for i in range(0, len(pixels), self.batch_size):
            chunk = np.ascontiguousarray(pixels[i : i + self.batch_size])
            batch = [chunk] + ([np.ascontiguousarray(chunk[:, :, ::-1])] if views == 2 else [])
            # The classifier's own forward, split: head(dropout(backbone)), dropout idle in eval mode.
            pooled = [self.model.backbone(to_device(normalize(b, prep), self.device)) for b in batch]
            outs.append(np.stack([self.model.head(f).float().cpu().numpy() for f in pooled], axis=1))
            feats.append(pooled[0].float().cpu().numpy())
        if not outs:
            return np.zeros((0, views, len(self.classes)), dtype=np.float32), np.zeros((0, 0), dtype=np.float32)
        return np.concatenate(outs), np.concatenate(feats)

    def probabilities_from_pixels(self, pixels: np.ndarray, tta: bool = False) -> np.ndarray:
        return softmax(self.logits_from_pixels(pixels, tta), self.config.temperature)

    def predict_paths(self, paths: list[str | Path], progress: Callable[[int], None] | None = None,
                      tta: bool = False) -> list[Prediction]:
        """Decode (threads) and classify batch by batch; files that fail carry their reason."""
        logits, similarity, errors = self.outputs_from_paths(paths, progress, views=2 if tta else 1)
        return predictions(paths, logits, similarity, errors, self.config.temperature, self.familiarity)

    def logits_from_paths(self, paths: list[str | Path], progress: Callable[[int], None] | None = None,
                          views: int = 1) -> tuple[np.ndarray, list[str | None]]:
        """``N x views x classes`` logits (NaN where a file failed) and each file's error or None."""
        logits, _, errors = self.outputs_from_paths(paths, progress, views)
        return logits, errors

    def outputs_from_paths(self, paths: list[str | Path], progress: Callable[[int], None] | None = None,
                           views: int = 1) -> tuple[np.ndarray, np.ndarray | None, list[str | None]]:
        """:meth:`logits_from_paths`, with each file's similarity to the training photos (NaN where it
        failed; None for a run without the familiarity check)."""
        prep = self.config.preprocessing

        def decode(p: str) -> np.ndarray:
            return to_model_pixels(load_rgb(p, min_side=prep.size), prep)

        return outputs_over_files(paths, decode, self.batch_size, len(self.classes),
                                  lambda pixels: self.view_outputs(pixels, views),
                                  None if self.familiarity is None else self.familiarity.similarity,
                                  progress, views)

"""The PyTorch predictor: a saved model folder in, probabilities out; bad files reported, never fatal."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from vistrain.data.images import ImageError, is_candidate, load_rgb
from vistrain.data.transforms import normalize, to_model_pixels
from vistrain.models.classifier import ImageClassifier, ModelConfig, load_model


@dataclass
class Prediction:
    path: str
    probabilities: np.ndarray | None  # over the model's classes; None when the file failed
    error: str | None = None


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class Predictor:
    def __init__(self, model: ImageClassifier, config: ModelConfig, batch_size: int = 32):
        self.model = model.eval().to(memory_format=torch.channels_last)
        self.config = config
        self.batch_size = batch_size

    @classmethod
    def from_folder(cls, folder: Path | str, batch_size: int = 32) -> "Predictor":
        model, cfg = load_model(folder)
        return cls(model, cfg, batch_size)

    @property
    def classes(self) -> list[str]:
        return self.config.classes

    @torch.inference_mode()
    def logits_from_pixels(self, pixels: np.ndarray) -> np.ndarray:
        prep = self.config.preprocessing
        outs = [self.model(normalize(np.ascontiguousarray(pixels[i : i + self.batch_size]), prep)).float().numpy()
                for i in range(0, len(pixels), self.batch_size)]
        return np.concatenate(outs) if outs else np.zeros((0, len(self.classes)), dtype=np.float32)

    def probabilities_from_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return softmax(self.logits_from_pixels(pixels), self.config.temperature)

    def predict_paths(self, paths: list[str | Path], progress: Callable[[int], None] | None = None) -> list[Prediction]:
        """Decode (threads) and classify batch by batch; files that fail carry their reason."""
        prep = self.config.preprocessing
        results: list[Prediction] = []

        def decode(p):
            try:
                return to_model_pixels(load_rgb(p, min_side=prep.size), prep), None
            except ImageError as exc:
                return None, exc.reason

        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            for start in range(0, len(paths), self.batch_size):
                chunk = [str(p) for p in paths[start : start + self.batch_size]]
                decoded = list(pool.map(decode, chunk))
                good = [i for i, (px, _) in enumerate(decoded) if px is not None]
                probs = self.probabilities_from_pixels(np.stack([decoded[i][0] for i in good])) if good else []
                by_index = dict(zip(good, probs))
                for i, p in enumerate(chunk):
                    results.append(Prediction(p, by_index.get(i), decoded[i][1]))
                if progress:
                    progress(len(chunk))
        return results


def collect_images(inputs: list[str | Path]) -> list[Path]:
    """Files given directly, plus every non-hidden file under the folders given (sorted, recursive)."""
    files: list[Path] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            files.extend(sorted(f for f in p.rglob("*") if is_candidate(f) and not any(
                part.startswith(".") for part in f.relative_to(p).parts)))
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    return files

"""Does a mirror image keep its label? Decides whether fine-tuning may flip its crops.

Horizontal flips are the safest augmentation for photos of things, and wrong where handedness
carries the meaning (digits, letters, arrows, left/right road signs): there a flipped training image
teaches a wrong label. The linear probe answers the question from the data: it was fitted on
unflipped images, so on the validation images it is about as accurate mirrored as not when mirroring
keeps the class (ImageNet backbones were trained with flips: their features barely change), and
clearly worse when it does not. An exact one-sided McNemar test on the paired outcomes (right only
unflipped vs right only mirrored) keeps small validation sets from deciding on noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

ALPHA = 0.01  # the mirrored images must be worse beyond this chance level ...
MIN_DROP = 0.05  # ... and by at least this much accuracy, before flips are turned off


@dataclass(frozen=True)
class MirrorCheck:
    n: int
    accuracy: float  # the probe on the validation images
    mirrored_accuracy: float  # the same probe on their mirror images
    lost: int  # right as they are, wrong mirrored
    gained: int  # wrong as they are, right mirrored
    p_value: float  # one-sided: mirrored images are worse only by chance

    @property
    def keep_flips(self) -> bool:
        return not (self.p_value < ALPHA and self.accuracy - self.mirrored_accuracy >= MIN_DROP)

    def describe(self) -> str:
        verdict = ("flips kept: mirror images keep their labels" if self.keep_flips
                   else "flips turned off: mirror images change meaning here")
        return (f"mirror check: the probe gets {self.accuracy:.1%} of {self.n} validation images right, "
                f"{self.mirrored_accuracy:.1%} of their mirror images ({self.lost} lost, {self.gained} gained, "
                f"p = {self.p_value:.2g}); {verdict}")


def binomial_tail(k: int, n: int) -> float:
    """P(X >= k) for X ~ Binomial(n, 1/2), exactly."""
    if n <= 0 or k <= 0:
        return 1.0
    return sum(math.comb(n, i) for i in range(k, n + 1)) / 2**n


def mirror_check(labels: np.ndarray, predicted: np.ndarray, predicted_mirrored: np.ndarray) -> MirrorCheck:
    """Compare the probe's answers on images and on their mirror images (paired, exact McNemar)."""
    labels, predicted, predicted_mirrored = map(np.asarray, (labels, predicted, predicted_mirrored))
    if not labels.shape == predicted.shape == predicted_mirrored.shape:
        raise ValueError(f"labels and predictions differ in length: {labels.shape}, {predicted.shape}, "
                         f"{predicted_mirrored.shape}")
    right, right_mirrored = predicted == labels, predicted_mirrored == labels
    lost = int((right & ~right_mirrored).sum())
    gained = int((~right & right_mirrored).sum())
    n = len(labels)
    return MirrorCheck(n, float(right.mean()) if n else 0.0, float(right_mirrored.mean()) if n else 0.0,
                       lost, gained, binomial_tail(lost, lost + gained))


def mirrored(pixels: np.ndarray) -> np.ndarray:
    """``N x H x W x C`` images flipped left to right."""
    return np.ascontiguousarray(pixels[:, :, ::-1])

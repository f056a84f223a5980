"""Spend a time budget that fine-tuning cannot use on probes of more backbones: an ensemble.

When not one fine-tuning epoch fits the budget (clothing: 3068 photos, ~500 s an epoch at 352 px on
2 cores), the rest of the budget would go unused; when one or two fit, they have not beaten the
probe in any measurement here (see planning.MIN_FINETUNE_EPOCHS); and when the epochs ran but
none beat the probe (a few hundred photos), the budget left is spent the same way. A probe on another backbone with the same
preprocessing costs one forward pass per image; measured on clothing, averaging the logits of the
Lite0, Lite1 and Lite2 probes raised validation accuracy from 88.0% to 90.9% (test 90.9% -> 93.3%).
Partners join in registry order while their features' estimated time fits (each is timed on a few
images first; cached features cost nothing), and the ensemble is kept only if it beats the single
probe on validation by the rule that picks the best fine-tuning epoch: score, then loss on ties.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from vistrain.data.pixel_cache import PixelCache
from vistrain.data.transforms import Preprocessing
from vistrain.models.registry import (
    ENSEMBLE_SEP,
    create_backbone,
    ensemble_partners,
    get_backbone,
)
from vistrain.progress import Reporter
from vistrain.training.balance import macro_f1
from vistrain.training.feature_cache import FeatureCache
from vistrain.training.features import extract_features, members_features, onnx_session
from vistrain.training.finetune import cross_entropy
from vistrain.training.probe import fit_ensemble_probe, probe_logits

ENSEMBLES = ("auto", "off")
# Whole feature passes over their timed sample's rate: decoding and cache reads come on top.
FEATURE_MARGIN = 1.2
SAMPLE = 16  # images timed per backbone (after one warm-up batch)


@dataclass
class Probe:
    """A linear probe (or an ensemble of them) and how it scores on validation."""

    backbone: str
    weight: torch.Tensor
    bias: torch.Tensor
    valid_logits: np.ndarray
    accuracy: float
    loss: float
    score: float  # accuracy, or macro F1 when classes are imbalanced

    def beats(self, other: Probe) -> bool:
        return (self.score, -self.loss) > (other.score, -other.loss)


@dataclass
class Growth:
    kept: Probe  # the ensemble when it won, else the single probe given
    added: list[str]  # backbones whose probes were fitted
    note: str


def seconds_per_image(backbone: torch.nn.Module, name: str, prep: Preprocessing, cache_root, pixels: np.ndarray) -> float:
    """Feature seconds per image, timed the way features are computed (ONNX Runtime when present)."""
    session = onnx_session(backbone, name, prep, cache_root)
    sample = pixels[: SAMPLE + 2]
    if len(sample) > 2:  # first run: allocations, kernel choice; not timed when there is more
        extract_features(backbone, sample[:2], prep, session=session)
        sample = sample[2:]
    t = time.perf_counter()
    extract_features(backbone, sample, prep, session=session)
    return (time.perf_counter() - t) / max(1, len(sample))


def score_probe(backbone: str, w: torch.Tensor, b: torch.Tensor, f_valid: np.ndarray, y_valid: np.ndarray,
                num_classes: int, select_by: str) -> Probe:
    logits = probe_logits(f_valid, w, b)
    acc = float((logits.argmax(1) == y_valid).mean())
    score = macro_f1(y_valid, logits.argmax(1), num_classes) if select_by == "macro_f1" else acc
    return Probe(backbone, w, b, logits, acc, cross_entropy(logits, y_valid), score)


@dataclass
class GrowthPlan:
    """Which partners' probes fit the time left, from their features' estimated seconds."""

    base: str
    partners: list[str]  # every partner, in registry order
    fits: list[str]  # those added, in order
    blocked: list[tuple[str, float]]  # (name, estimated seconds) of those that did not fit
    reserve: float  # seconds kept for the single backbone's own test features
    seconds_left: float

    def shortfall_note(self) -> str:
        every = ENSEMBLE_SEP.join([self.base, *self.partners])
        if self.seconds_left <= 0:
            return f"no time left for an ensemble of probes: a larger --time-budget, or --backbone {every}"
        total = sum(need for _, need in self.blocked)
        short = max(1, math.ceil(total + self.reserve - self.seconds_left))
        return (f"an ensemble of probes needs ~{short} s more than the budget left (features of "
                f"{', '.join(n for n, _ in self.blocked)}: ~{total:.0f} s): a larger --time-budget, or --backbone {every}")


def plan_growth(ui: Reporter, base: str, splits: dict[str, list], prep: Preprocessing, cache_root,
                seconds_left: float, valid_pixels: np.ndarray, base_module: torch.nn.Module | None = None
                ) -> GrowthPlan | None:
    """Partners of ``base`` whose missing features (train, valid and test: the test split's are
    computed at the end, for the model kept) fit ``seconds_left``, after keeping time for ``base``'s
    own missing test features. None when ``base`` has no partner.

    Each partner with missing features is timed on a few validation images; cached features cost
    next to nothing, so a partner whose features are all cached always fits.
    """
    partners = ensemble_partners(base)
    if not partners:
        return None
    plan = GrowthPlan(base, partners, [], [], 0.0, seconds_left)
    if seconds_left <= 0:
        plan.blocked = [(name, 0.0) for name in partners]
        return plan
    test = splits.get("test", [])
    if test and base_module is not None:
        missing = len(FeatureCache(cache_root, base, prep).get([r.sha1 for r in test])[1])
        if missing:
            plan.reserve = missing * FEATURE_MARGIN * seconds_per_image(base_module, base, prep, cache_root, valid_pixels)
    left = seconds_left - plan.reserve
    for name in partners:
        cache = FeatureCache(cache_root, name, prep)
        missing = sum(len(cache.get([r.sha1 for r in splits[s]])[1]) for s in ("train", "valid", "test") if s in splits)
        need = 0.0
        if missing:
            module = create_backbone(name).eval().to(memory_format=torch.channels_last)
            need = missing * FEATURE_MARGIN * seconds_per_image(module, name, prep, cache_root, valid_pixels)
        if need > left:
            plan.blocked.append((name, need))
            ui.log(f"  {name}: ~{need:.0f} s of features, {max(left, 0):.0f} s left in the budget: not added")
            continue
        ui.log(f"  {name}: ~{need:.0f} s of features ({missing} images), {left:.0f} s left: adding its probe")
        plan.fits.append(name)
        left -= need
    return plan


def grow_ensemble(ui: Reporter, single: Probe, plan: GrowthPlan, splits: dict[str, list],
                  labels: dict[str, np.ndarray], features: dict[str, np.ndarray], prep: Preprocessing, cache_root,
                  valid_pixels: np.ndarray, num_classes: int, select_by: str, C: list[float | None], seed: int,
                  class_weight: str | None, pixel_cache: PixelCache | None = None) -> Growth:
    """The probes ``plan`` fits, and the better of their ensemble with ``single`` and ``single`` alone.

    ``splits``/``labels``/``features``: train and valid (and test) records, their label indices and
    ``single``'s features (train and valid). ``C``: the single probe's regularisation strength(s),
    then the partners' (None: each chooses its own on validation, as the single probe did).
    """
    if not plan.fits:
        return Growth(single, [], plan.shortfall_note())
    modules = [create_backbone(name).eval().to(memory_format=torch.channels_last) for name in plan.fits]
    caches = [FeatureCache(cache_root, name, prep) for name in plan.fits]
    # The training images are decoded (read back from the pixel cache) once for all partners.
    f_train = members_features(ui, modules, splits["train"], prep, caches, pixel_cache=pixel_cache,
                               split="training")
    f_valid = members_features(ui, modules, splits["valid"], prep, caches, valid_pixels, pixel_cache,
                               split="validation")
    members = [single.backbone, *plan.fits]
    widths = [get_backbone(m).num_features for m in members]
    Cs = [*C[:-1], *[C[-1]] * len(plan.fits)]  # the single probe's are known: no second search
    w, b, _ = fit_ensemble_probe(np.hstack([features["train"], f_train]), labels["train"], num_classes, widths,
                                 valid=(np.hstack([features["valid"], f_valid]), labels["valid"]), C=Cs, seed=seed,
                                 class_weight=class_weight)
    ensemble = score_probe(ENSEMBLE_SEP.join(members), w, b, np.hstack([features["valid"], f_valid]), labels["valid"],
                           num_classes, select_by)
    won = ensemble.beats(single)
    what = select_by.replace("_", " ")
    verdict = (f"the time went to probes of {', '.join(plan.fits)}: their ensemble with "
               f"{single.backbone} scored {ensemble.score:.1%} {what} on validation (loss {ensemble.loss:.3f}) "
               f"against {single.score:.1%} (loss {single.loss:.3f}) alone: "
               + ("ensemble kept (predicting runs one network per member)" if won else "single probe kept"))
    return Growth(ensemble if won else single, list(plan.fits), verdict)

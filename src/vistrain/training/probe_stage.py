"""The probe stage: frozen features (cached) and a logistic-regression head, the first model of every run."""

from __future__ import annotations

import time

import numpy as np
import torch

from vistrain.models.classifier import ImageClassifier
from vistrain.models.registry import get_backbone
from vistrain.training.balance import probe_class_weight
from vistrain.training.feature_cache import FeatureCache
from vistrain.training.features import backbone_features
from vistrain.training.grow import score_probe
from vistrain.training.probe import describe_choice, fit_ensemble_probe, probe_logits
from vistrain.training.run_state import ProbeState, RunState, state_copy


def probe_stage(run: RunState, model: ImageClassifier, caches: list[FeatureCache], train_pixels: np.ndarray | None,
                valid_pixels: np.ndarray | None) -> ProbeState:
    """Frozen features (cached) and a logistic-regression head, copied into ``model.head``; when
    resuming, the probe head the checkpoint kept."""
    ui, r, choice = run.ui, run.resumed, None
    if r is not None:
        if r.probe_head is not None:
            model.head.load_state_dict(r.probe_head)
        probe = ProbeState(state_copy(model), r.probe_accuracy, r.probe_loss,
                           r.probe_score if r.probe_score is not None else r.probe_accuracy)
    else:
        probe, choice = fit_model_probe(run, model, caches, train_pixels, valid_pixels)
    ui.log(f"Linear probe: validation accuracy {probe.accuracy:.1%} ({time.perf_counter() - run.t_start:.0f} s so far)")
    if choice:
        ui.log("  " + choice)
        run.notes.append(choice)
    return probe


def fit_model_probe(run: RunState, model: ImageClassifier, caches: list[FeatureCache],
                    train_pixels: np.ndarray | None, valid_pixels: np.ndarray | None) -> tuple[ProbeState, str | None]:
    """The probe on ``model``'s (pretrained) backbone, copied into ``model.head``, and what chose its
    regularisation. Deterministic: the same features and seed give the same head."""
    ui = run.ui
    f_train = backbone_features(ui, model.backbone, run.train, run.prep, caches, train_pixels,
                                run.pixel_cache, "training")
    f_valid = backbone_features(ui, model.backbone, run.valid, run.prep, caches, valid_pixels,
                                run.pixel_cache, "validation")
    widths = [get_backbone(m).num_features for m in run.members]
    class_weight = probe_class_weight(run.balance)
    w, b, heads = fit_ensemble_probe(f_train, run.y_train, len(run.classes), widths, valid=(f_valid, run.y_valid),
                                     C=run.cfg.probe_c, seed=run.cfg.seed, class_weight=class_weight)
    single = score_probe(run.cfg.backbone, w, b, f_valid, run.y_valid, len(run.classes), run.select_by)
    if len(run.members) > 1:
        ui.log("Ensemble of linear probes (logits averaged); alone on validation: " + ", ".join(
            f"{m} {_accuracy(probe_logits(f, h.weight, h.bias), run.y_valid):.1%}"
            for m, f, h in zip(run.members, np.split(f_valid, np.cumsum(widths)[:-1], axis=1), heads)))
    with torch.no_grad():
        model.head.weight.copy_(w)
        model.head.bias.copy_(b)
    probe = ProbeState(state_copy(model), single.accuracy, single.loss, single.score, single.valid_logits,
                       single, {"train": f_train, "valid": f_valid}, [h.C for h in heads], class_weight)
    return probe, describe_choice(heads, run.members)


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean())

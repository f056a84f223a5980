"""The learning-rate range test (Smith, 2015; fastai's ``lr_find``), from the probe-initialised model.

Fine-tuning in vistrain starts from the linear probe's head, so the test does too: the
learning rate grows exponentially over ~100 training steps (same augmentation, frozen layers and
discriminative groups as fine-tuning), the loss is smoothed, and the suggestion is a tenth of the
rate at the lowest smoothed loss, where the loss still falls steadily without blowing up.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from vistrain.data.augment import augment_batch
from vistrain.data.dataset import DatasetIndex
from vistrain.models.classifier import ModelConfig, build_classifier
from vistrain.models.registry import ensemble_members, get_backbone
from vistrain.progress import Reporter, SilentReporter
from vistrain.training.balance import (
    imbalance_ratio,
    probe_class_weight,
    resolve_balance,
)
from vistrain.training.device import autocast, grad_scaler, resolve_device, to_device
from vistrain.training.feature_cache import FeatureCache
from vistrain.training.features import cached_features
from vistrain.training.finetune import (
    FinetuneConfig,
    param_groups,
    set_train_mode,
    train_preprocessing,
)
from vistrain.training.fold import folded_batchnorm
from vistrain.training.pixels import decode_all
from vistrain.training.probe import choose_probe
from vistrain.training.trainer import TrainConfig, choose_image_size


@dataclass
class LRFindResult:
    lrs: np.ndarray  # the head's learning rate at each step (the backbone groups get lr/3, lr/10)
    losses: np.ndarray  # raw training loss per step
    smoothed: np.ndarray  # bias-corrected exponential moving average of the loss
    suggestion: float  # a tenth of the rate at the lowest smoothed loss
    steepest: float | None  # where the smoothed loss falls fastest (None when it never falls)
    min_loss_lr: float
    stopped_early: bool  # the loss diverged before the last step
    seconds: float

    @property
    def informative(self) -> bool:
        """Whether the loss fell meaningfully before its lowest point (see ``MIN_FALL``). When it
        did not (a probe head that already fits the photos: loss ~0 from the first step), its lowest
        point is noise at the first rates tried, and a tenth of it (1e-8) would freeze training."""
        return self.steepest is not None

    def to_dict(self) -> dict:
        return {"suggestion": self.suggestion, "informative": self.informative, "steepest": self.steepest, "min_loss_lr": self.min_loss_lr,
                "steps": len(self.lrs), "stopped_early": self.stopped_early, "seconds": round(self.seconds, 1),
                "lrs": [float(v) for v in self.lrs], "losses": [float(v) for v in self.smoothed]}


def smooth(losses: np.ndarray, beta: float = 0.9) -> np.ndarray:
    avg, out = 0.0, []
    for i, v in enumerate(losses, start=1):
        avg = beta * avg + (1 - beta) * float(v)
        out.append(avg / (1 - beta**i))
    return np.array(out)


# What counts as the loss falling: from its highest point before its lowest, by at least
# MIN_FALL_FRACTION of that height and by at least MIN_FALL nats. The fraction alone is not enough:
# a head that already fits the photos starts near 0 (0.00044 on a clean 3-class set) and its batch
# noise moves it by half of that (to 0.00024, before blowing up to 6.8), a "fall" that says nothing
# about the learning rate; a curve that does tell one falls by tenths of a nat (from ~ln(classes)).
MIN_FALL_FRACTION = 0.1
MIN_FALL = 0.01


def fell(smoothed: np.ndarray) -> bool:
    """Whether a smoothed loss curve fell meaningfully before its lowest point (see ``MIN_FALL``)."""
    lowest = int(np.argmin(smoothed))
    peak = float(np.max(smoothed[: lowest + 1]))
    return peak - float(smoothed[lowest]) >= max(MIN_FALL_FRACTION * peak, MIN_FALL)


def suggest(lrs: np.ndarray, smoothed: np.ndarray) -> tuple[float, float | None, float]:
    """(min/10, steepest descent, lr at the minimum) of a smoothed loss curve; the steepest descent
    is None when the loss never fell meaningfully (see ``fell``), and then min/10 means nothing."""
    lowest = int(np.argmin(smoothed))
    min_lr = float(lrs[lowest])
    steepest = None
    if lowest >= 2 and fell(smoothed):
        slope = np.gradient(smoothed[: lowest + 1], np.log(lrs[: lowest + 1]))
        if slope.min() < 0:
            steepest = float(lrs[int(np.argmin(slope))])
    return min_lr / 10, steepest, min_lr


def lr_range_test(index: DatasetIndex, cfg: TrainConfig, reporter: Reporter | None = None, steps: int = 100,
                  start: float = 1e-7, end: float = 1.0, diverge: float = 4.0) -> LRFindResult:
    """Train ``steps`` batches at exponentially growing rates from the probe head; the model is discarded."""
    if steps < 10:
        raise ValueError(f"lr-find needs at least 10 steps (got {steps})")
    if not 0 < start < end:
        raise ValueError(f"learning rate range {start}..{end} must be increasing and positive")
    if len(ensemble_members(cfg.backbone)) > 1:
        raise ValueError(f"backbone {cfg.backbone!r} is an ensemble of linear probes: it has no fine-tuning "
                         f"learning rate to find")
    ui = reporter or SilentReporter()
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    size = cfg.image_size or choose_image_size(index, cfg.backbone)
    prep = get_backbone(cfg.backbone).preprocessing(size, cfg.resize)
    train = index.split("train")
    classes = index.classes
    y = np.array([classes.index(r.label) for r in train])
    device = resolve_device(cfg.device)  # the same device (and precision) as the training it tunes
    model = build_classifier(ModelConfig(cfg.backbone, classes, prep)).to(device, memory_format=torch.channels_last)
    with ui.stage("decode", len(train)) as advance:
        pixels, canvases = decode_all([r.path for r in train], prep, canvases=True, progress=advance)
    cache = FeatureCache(cfg.data.cache_dir, cfg.backbone, prep)
    features = cached_features(ui, model.backbone, train, prep, cache, pixels)
    del pixels
    # The probe train would start fine-tuning from: its C chosen on the validation images alike.
    valid = index.split("valid")
    f_valid = cached_features(ui, model.backbone, valid, prep, cache) if valid and cfg.probe_c is None else None
    y_valid = np.array([classes.index(r.label) for r in valid])
    # ... and class-weighted where training would weight it (imbalanced classes, --balance).
    balance = resolve_balance(cfg.balance, imbalance_ratio(y, len(classes)))
    probe = choose_probe(features, y, f_valid, y_valid, len(classes), C=cfg.probe_c, seed=cfg.seed,
                         class_weight=probe_class_weight(balance))
    with torch.no_grad():
        model.head.weight.copy_(probe.weight)
        model.head.bias.copy_(probe.bias)

    groups = param_groups(model, 1.0, FinetuneConfig().freeze_bottom)  # at lr 1, each group's lr is its share
    shares = [g["lr"] for g in groups]
    opt = torch.optim.AdamW(groups, lr=1.0, weight_decay=0.01)
    loss_fn = nn.CrossEntropyLoss()
    scaler = grad_scaler(device)
    set_train_mode(model, freeze_bn=True)
    small = train_preprocessing(prep)
    lrs = start * (end / start) ** (np.arange(steps) / (steps - 1))
    n = min(cfg.batch_size, len(canvases))
    queue = np.zeros(0, dtype=int)
    losses: list[float] = []
    best = math.inf
    stopped = False
    with ui.stage("lr-find", steps, unit="step") as advance, folded_batchnorm(model):  # as fine-tuning runs
        for i, lr in enumerate(lrs):
            for g, share in zip(opt.param_groups, shares):
                g["lr"] = lr * share
            if len(queue) < n:  # whole passes over the training set, reshuffled each time
                queue = np.r_[queue, rng.permutation(len(canvases))].astype(int)
            idx, queue = queue[:n], queue[n:]
            x = to_device(augment_batch([canvases[j] for j in idx], small, cfg.augment, rng), device)
            with autocast(device):
                loss = loss_fn(model(x), to_device(torch.as_tensor(y[idx]), device))
            opt.zero_grad(set_to_none=True)
            if scaler is None:
                loss.backward()
                opt.step()
            else:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            losses.append(float(loss.detach()))
            advance(1)
            current = smooth(np.array(losses))[-1]
            best = min(best, current)
            if not math.isfinite(current) or (i > 10 and current > diverge * best):
                stopped = i < steps - 1
                break
    done = len(losses)
    sm = smooth(np.array(losses))
    suggestion, steepest, min_lr = suggest(lrs[:done], sm)
    return LRFindResult(lrs[:done], np.array(losses), sm, suggestion, steepest, min_lr, stopped, time.perf_counter() - t0)

"""Fine-tuning the whole network: discriminative learning rates, one-cycle AdamW, label smoothing.

The head starts from the linear probe (that is the warm-up), BatchNorm statistics stay frozen
(small CPU batches would make them noisy), and the best epoch by validation accuracy is kept.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from vistrain.data.augment import AugmentConfig, augment_batch
from vistrain.data.transforms import Preprocessing, normalize
from vistrain.memory import inference_batch_size, release_freed_memory
from vistrain.models.classifier import ImageClassifier
from vistrain.models.inference import WORTH_IT
from vistrain.training.balance import (
    class_weights,
    collapsed_class,
    macro_f1,
    sample_probabilities,
)
from vistrain.training.device import (
    autocast,
    batch_workers,
    grad_scaler,
    model_device,
    pin,
    synchronize,
    to_device,
)
from vistrain.training.distributed import (
    any_rank,
    shard,
    shard_length,
    world_size,
    wrap,
)
from vistrain.training.features import faster_copy
from vistrain.training.fold import folded_batchnorm
from vistrain.training.loader import Prefetcher
from vistrain.training.schedules import build_scheduler

EPOCH_MARGIN = 1.2  # a whole epoch's seconds over its steps' calibrated seconds, see plan_epochs


@dataclass
class FinetuneConfig:
    epochs: int = 8  # the most epochs; the time budget may plan fewer
    time_budget: float | None = None  # seconds available for fine-tuning, None: no limit
    batch_size: int = 32
    # Images per forward/backward pass; gradients of a step's micro-batches add up to the whole
    # batch's (exactly, with BatchNorm frozen), so only memory changes. None: the whole batch.
    micro_batch: int | None = None
    lr: float = 1e-4  # the head's; the backbone's groups get lr/3, lr/10, lr/30 from top to bottom
    weight_decay: float = 0.01
    label_smoothing: float = 0.0
    patience: int = 3  # epochs without a lower validation loss before stopping (annealing half only)
    freeze_bn: bool = True
    freeze_bottom: bool = True
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    seed: int = 0
    schedule: str = "onecycle"
    balance: str = "none"  # the correction applied: "sampler", "loss" or "none" (see training.balance)
    select_by: str = "accuracy"  # best epoch by "accuracy" or, when classes are imbalanced, "macro_f1"


@dataclass
class EpochResult:
    epoch: int
    train_loss: float
    train_accuracy: float
    valid_loss: float
    valid_accuracy: float
    seconds: float
    lr: float
    data_wait: float = 0.0  # seconds the training step waited for its batch


@dataclass
class FinetuneState:
    """What survives between epochs (and an interruption)."""

    planned_epochs: int
    history: list[EpochResult] = field(default_factory=list)
    best_accuracy: float = -1.0
    best_score: float = -1.0  # accuracy or macro F1 of the best epoch, as FinetuneConfig.select_by says
    best_loss: float = math.inf
    best_epoch: int = 0
    best_state: dict | None = None
    best_logits: np.ndarray | None = None  # validation logits of the best epoch (not checkpointed)
    lowest_loss: float = math.inf  # early stopping watches the loss: smoother than accuracy on few images
    lowest_loss_epoch: int = 0
    interrupted: bool = False
    stop_reason: str = ""
    out_of_time: bool = False  # stopped by the time budget before its planned epochs


def param_groups(model: ImageClassifier, lr: float, freeze_bottom: bool) -> list[dict]:
    """Backbone parameters in three contiguous depth groups (lr/30, lr/10, lr/3) plus the head (lr).

    With ``freeze_bottom`` the lowest group (stem and first blocks: generic edges and textures,
    and the most expensive layers to back-propagate through, at full resolution) stays frozen.
    """
    body = list(model.backbone.parameters())
    thirds = np.array_split(np.arange(len(body)), 3)
    groups = []
    for k, (idx, f) in enumerate(zip(thirds, (30, 10, 3))):
        params = [body[i] for i in idx]
        frozen = freeze_bottom and k == 0
        for p in params:
            p.requires_grad_(not frozen)
        if params and not frozen:
            groups.append({"params": params, "lr": lr / f})
    groups.append({"params": list(model.head.parameters()), "lr": lr})
    return groups


def train_preprocessing(prep: Preprocessing) -> Preprocessing:
    """Random-resized crops at about 0.8x the evaluation size (a multiple of 32).

    Crops enlarge objects, so a network trained on crops at size R sees objects at their training
    size when tested on whole images at ~1.15-1.3 R (Touvron et al., "Fixing the train-test
    resolution discrepancy", 2019). Smaller training inputs are also ~1.5x cheaper per step.
    """
    size = max(32, 32 * round(0.8 * prep.size / 32))
    return replace(prep, size=min(size, prep.size))


def set_train_mode(model: nn.Module, freeze_bn: bool) -> None:
    model.train()
    if freeze_bn:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


@torch.inference_mode()
def evaluate_logits(model: nn.Module, pixels: np.ndarray, prep: Preprocessing, batch_size: int | None = None) -> np.ndarray:
    """float32 logits on the model's device (no autocast: they fit the temperature prediction uses)."""
    model.eval()
    device = model_device(model)
    batch_size = batch_size or inference_batch_size(prep.size)
    if len(pixels) >= WORTH_IT:
        model = faster_copy(model, pixels, prep)
    outs = [model(to_device(normalize(np.ascontiguousarray(pixels[i : i + batch_size]), prep), device)).float().cpu().numpy()
            for i in range(0, len(pixels), batch_size)]
    return np.concatenate(outs)


def cross_entropy(logits: np.ndarray, y: np.ndarray) -> float:
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean())


def micro_batch_size(cfg: FinetuneConfig) -> int:
    """Images per pass. Whole batches when BatchNorm learns batch statistics (smaller passes would
    change them) and under DistributedDataParallel (every process must run the same passes)."""
    if cfg.micro_batch is None or not cfg.freeze_bn or world_size() > 1:
        return cfg.batch_size
    return max(1, min(cfg.micro_batch, cfg.batch_size))


def accumulate(net: nn.Module, loss_fn: nn.Module, x: torch.Tensor, y: torch.Tensor, micro: int, device,
               scaler=None) -> tuple[torch.Tensor, int]:
    """Forward and backward over ``x`` in passes of ``micro`` images; gradients accumulate in ``.grad``.

    ``loss_fn`` sums (``reduction="sum"``); each pass is divided by the whole batch's weight, so the
    gradients equal one pass's over the whole batch. Returns the batch's mean loss and correct count.
    """
    weight = getattr(loss_fn, "weight", None)
    denom = float(weight[y].sum()) if weight is not None else float(len(y))
    total = torch.zeros((), device=x.device)
    correct = 0
    for a in range(0, len(y), micro):
        with autocast(device):
            logits = net(x[a : a + micro])
            part = loss_fn(logits, y[a : a + micro]) / denom
        (part if scaler is None else scaler.scale(part)).backward()
        total += part.detach().float()
        correct += int((logits.argmax(1) == y[a : a + micro]).sum())
    return total, correct


def measure_step_seconds(model: ImageClassifier, canvases, labels, prep, cfg: FinetuneConfig, steps: int = 2) -> float:
    """Seconds for one training step (forward + backward), measured after one warm-up step."""
    rng = np.random.default_rng(cfg.seed)
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    device = model_device(model)
    micro = micro_batch_size(cfg)
    param_groups(model, cfg.lr, cfg.freeze_bottom)  # same frozen layers as training: same cost
    set_train_mode(model, cfg.freeze_bn)
    n = min(cfg.batch_size, len(canvases))
    times = []
    with folded_batchnorm(model, cfg.freeze_bn):
        for _ in range(steps + 1):
            idx = rng.choice(len(canvases), n, replace=False)
            t = time.perf_counter()
            x = to_device(augment_batch([canvases[i] for i in idx], train_preprocessing(prep), cfg.augment, rng), device)
            accumulate(model, loss_fn, x, to_device(torch.as_tensor(labels[idx]), device), micro, device)  # as training does
            synchronize(device)
            times.append(time.perf_counter() - t)
    model.zero_grad(set_to_none=True)
    return float(np.median(times[1:])) * cfg.batch_size / n


def plan_epochs(cfg: FinetuneConfig, n_train: int, step_seconds: float, eval_seconds: float) -> tuple[int, float]:
    """Epochs that fit ``cfg.time_budget``, and the expected seconds per epoch."""
    steps = math.ceil(n_train / cfg.batch_size)
    # Whole epochs run slower than the calibration steps (optimizer, allocator, schedule): 0.97-1.22x
    # in seven runs since BatchNorm folding and the per-epoch memory trim (it was 1.3-1.5x before).
    epoch_seconds = EPOCH_MARGIN * steps * step_seconds + eval_seconds
    if cfg.time_budget is None:
        return cfg.epochs, epoch_seconds
    return max(0, min(cfg.epochs, int(cfg.time_budget // epoch_seconds))), epoch_seconds


def finetune(
    model: ImageClassifier,
    canvases: list[np.ndarray],
    train_labels: np.ndarray,
    valid_pixels: np.ndarray,
    valid_labels: np.ndarray,
    prep: Preprocessing,
    cfg: FinetuneConfig,
    state: FinetuneState,
    optimizer_state: dict | None = None,
    on_epoch: Callable[[FinetuneState, torch.optim.Optimizer], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> FinetuneState:
    """Train for ``state.planned_epochs`` (continuing after ``len(state.history)`` on resume)."""
    # Frozen BatchNorms run folded into their convolutions: the same function, less memory.
    with folded_batchnorm(model, cfg.freeze_bn):
        return _finetune(model, canvases, train_labels, valid_pixels, valid_labels, prep, cfg, state,
                         optimizer_state, on_epoch, progress)


def _finetune(model, canvases, train_labels, valid_pixels, valid_labels, prep, cfg: FinetuneConfig,
              state: FinetuneState, optimizer_state, on_epoch, progress) -> FinetuneState:
    torch.manual_seed(cfg.seed)
    steps_per_epoch = math.ceil(shard_length(len(canvases)) / cfg.batch_size)
    stepper = _Stepper.build(model, train_labels, cfg, steps_per_epoch * state.planned_epochs)
    done = len(state.history)
    if optimizer_state is not None:
        stepper.restore(optimizer_state, done * steps_per_epoch)
    k = model.head.out_features
    draw_p = sample_probabilities(train_labels, k) if cfg.balance == "sampler" else None
    train_prep = train_preprocessing(prep)
    workers = batch_workers(stepper.device)
    labels_t = to_device(torch.as_tensor(train_labels), stepper.device)
    t_begin = time.perf_counter()
    try:
        for epoch in range(done + 1, state.planned_epochs + 1):
            # A fresh generator per epoch: a resumed run sees the same batches it would have.
            rng = np.random.default_rng([cfg.seed, epoch])
            t0 = time.perf_counter()
            set_train_mode(model, cfg.freeze_bn)
            order = (rng.choice(len(canvases), len(canvases), p=draw_p) if draw_p is not None
                     else rng.permutation(len(canvases)))
            order = shard(order)  # this process's share (all of it when training alone)

            def make_batch(s: int, order=order, epoch=epoch):
                idx = order[s * cfg.batch_size : (s + 1) * cfg.batch_size]
                # Each batch its own generator: the same augmentations whichever worker thread makes it.
                batch_rng = np.random.default_rng([cfg.seed, epoch, s])
                # Pinned here, in the prefetch thread, so the copy to a GPU does not wait.
                return idx, pin(augment_batch([canvases[i] for i in idx], train_prep, cfg.augment, batch_rng),
                                stepper.device)

            batches = Prefetcher(make_batch, steps_per_epoch, workers=workers)
            total_loss, correct = 0.0, 0
            for s, (idx, x) in enumerate(batches):
                loss, right, stepped = stepper.step(to_device(x, stepper.device), labels_t[idx])
                if not stepped:
                    state.stop_reason = (f"training diverged: the loss became {loss} in epoch {epoch}, "
                                         f"step {s + 1}; stopped early (try a lower --lr)")
                    return state
                total_loss += loss * len(idx)
                correct += right
                if progress:
                    progress(len(idx))
            vlog = evaluate_logits(model, valid_pixels, prep)
            seconds = time.perf_counter() - t0
            vacc, vloss = _track_best(state, model, vlog, valid_labels, cfg, k, epoch)
            state.history.append(EpochResult(epoch, total_loss / len(order), correct / len(order), vloss, vacc, seconds,
                                             float(stepper.opt.param_groups[-1]["lr"]), batches.wait_seconds))
            if on_epoch:
                on_epoch(state, stepper.opt)
            release_freed_memory()  # freed activations fragment the heap; the peak would creep up each epoch
            if _stop_after(state, epoch, vlog, valid_labels, cfg, time.perf_counter() - t_begin):
                break
    except KeyboardInterrupt:
        state.interrupted = True
        state.stop_reason = "interrupted (Ctrl-C): kept the best model so far"
    return state


@dataclass
class _Stepper:
    """The optimizer step that every batch of every epoch takes."""

    net: nn.Module  # the model, or its DistributedDataParallel wrapper
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None  # float16 mixed precision on CUDA; None (float32, as ever) on the CPU
    loss_fn: nn.Module
    micro: int
    device: torch.device

    @classmethod
    def build(cls, model: ImageClassifier, train_labels: np.ndarray, cfg: FinetuneConfig, total_steps: int) -> _Stepper:
        opt = torch.optim.AdamW(param_groups(model, cfg.lr, cfg.freeze_bottom), weight_decay=cfg.weight_decay)
        net = wrap(model)  # DistributedDataParallel under torchrun: gradients averaged over the processes
        sched = build_scheduler(cfg.schedule, opt, total_steps)
        device = model_device(model)
        weight = (torch.tensor(class_weights(train_labels, model.head.out_features), dtype=torch.float32,
                               device=device) if cfg.balance == "loss" else None)
        loss_fn = nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing, reduction="sum")
        return cls(net, opt, sched, grad_scaler(device), loss_fn, micro_batch_size(cfg), device)

    def restore(self, optimizer_state: dict, steps_done: int) -> None:
        """An interrupted run's optimizer, and its schedule fast-forwarded to where it stopped."""
        self.opt.load_state_dict(optimizer_state)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*")  # stepped before any step
            for _ in range(steps_done):
                self.sched.step()

    def step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int, bool]:
        """(mean loss, images right, whether the step was taken) for one batch: no step is taken
        when the loss is not finite on some process."""
        self.opt.zero_grad(set_to_none=True)
        loss, right = accumulate(self.net, self.loss_fn, x, y, self.micro, self.device, self.scaler)
        if any_rank(not torch.isfinite(loss)):
            return loss.item(), right, False
        if self.scaler is None:
            self.opt.step()
            self.sched.step()
        else:
            self.scaler.step(self.opt)  # skipped when float16 gradients overflowed; the scale adapts
            self.scaler.update()
            with warnings.catch_warnings():  # a skipped first step makes the scheduler warn
                warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*")
                self.sched.step()
        return loss.item(), right, True


def _track_best(state: FinetuneState, model: nn.Module, vlog: np.ndarray, valid_labels: np.ndarray,
                cfg: FinetuneConfig, k: int, epoch: int) -> tuple[float, float]:
    """The epoch's validation accuracy and loss. It becomes the best one in ``state`` when it scores
    higher (ties on the score, common on small validation sets, go to the lower loss)."""
    vacc = float((vlog.argmax(1) == valid_labels).mean())
    vloss = cross_entropy(vlog, valid_labels)
    score = macro_f1(valid_labels, vlog.argmax(1), k) if cfg.select_by == "macro_f1" else vacc
    if score > state.best_score or (score == state.best_score and vloss < state.best_loss):
        state.best_accuracy, state.best_score, state.best_loss, state.best_epoch = vacc, score, vloss, epoch
        state.best_state = copy.deepcopy(model.state_dict())
        state.best_logits = vlog
    if vloss < state.lowest_loss - 1e-4:  # a real improvement, not rounding noise
        state.lowest_loss, state.lowest_loss_epoch = vloss, epoch
    return vacc, vloss


def _stop_after(state: FinetuneState, epoch: int, vlog: np.ndarray, valid_labels: np.ndarray, cfg: FinetuneConfig,
                spent: float) -> bool:
    """Whether to stop after ``epoch`` (``state.stop_reason`` says why): a collapsed network, the
    time budget, or validation loss that stopped falling late in the schedule."""
    stuck = collapsed_class(vlog.argmax(1), valid_labels)
    if stuck is not None:
        state.stop_reason = (f"training diverged: after epoch {epoch} the network predicts class #{stuck} "
                             f"for every validation image; stopped early (try a lower --lr)")
        return True
    if any_rank(cfg.time_budget is not None and epoch < state.planned_epochs
                and spent + state.history[-1].seconds > cfg.time_budget):
        state.stop_reason = f"time budget reached after epoch {epoch} of {state.planned_epochs}"
        state.out_of_time = True
        return True
    # Only in the annealing half: a one-cycle schedule dips at its peak and recovers as it cools.
    # Not after the last epoch: nothing is stopped there, and the run should not say so.
    if state.planned_epochs / 2 < epoch < state.planned_epochs and epoch - state.lowest_loss_epoch >= cfg.patience:
        state.stop_reason = f"early stop: validation loss not lower for {cfg.patience} epochs"
        return True
    return False

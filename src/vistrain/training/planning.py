"""Planning fine-tuning against the time budget, and pinning what the plan decided.

The budget is spent by measured speed: a step and an evaluation are timed, and the epochs that fit
are planned. Because the plan depends on the machine, :func:`budget_decisions` names the settings
under which a run without a budget repeats it (written to the run's ``train_config.yaml``).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch

from vistrain.familiarity import MAX_BANK
from vistrain.memory import training_budget_bytes
from vistrain.models.registry import ENSEMBLE_SEP, ensemble_partners
from vistrain.training.device import gpu_activation_budget, model_device
from vistrain.training.distributed import agree_min
from vistrain.training.finetune import (
    FinetuneConfig,
    FinetuneState,
    evaluate_logits,
    measure_step_seconds,
    plan_epochs,
)

if TYPE_CHECKING:
    from vistrain.training.grow import Growth
    from vistrain.training.settings import TrainConfig

# Fewer fine-tuning epochs than this, when they are all the budget allows, give way to an ensemble of
# probes (training.grow) if one fits: a one-cycle schedule squeezed into an epoch or two has not beaten
# the probe in any measurement here (clothing, 1 epoch: 87.4% against the probe's 88.0%; climbing's
# best epochs came 5-6 of 8), while the ensemble measured +2.9 points on clothing's validation.
MIN_FINETUNE_EPOCHS = 3


def activation_budget(cfg: TrainConfig, device: torch.device) -> float | None:
    """Bytes one training pass's activations may take: on a GPU its free memory (activations live
    there; ``max_memory`` caps the host process), else the host budget from ``max_memory``."""
    gpu = gpu_activation_budget(device)
    return gpu if gpu is not None else training_budget_bytes(cfg.max_memory)


def plan_finetuning(ui, model, canvases, y_train, valid_pixels, prep, ft_cfg: FinetuneConfig, cfg: TrainConfig,
          t_start: float, notes: list[str]) -> tuple[FinetuneState, float]:
    """Measure a training step and an evaluation, then plan the epochs that fit the time budget."""
    step_s = measure_step_seconds(model, canvases, y_train, prep, ft_cfg)
    eval_s = _eval_seconds(model, valid_pixels, prep)
    if cfg.time_budget is not None:
        # The mirror check runs before the first epoch (features of the mirrored validation images:
        # about one evaluation's time, ONNX Runtime being no slower than the eager model).
        margin = _margin(cfg, eval_s, len(canvases), len(valid_pixels)) + (eval_s if ft_cfg.augment.flip == "auto" else 0)
        ft_cfg.time_budget = cfg.time_budget - (time.perf_counter() - t_start) - margin
    planned, epoch_s = plan_epochs(ft_cfg, len(canvases), step_s, eval_s)
    planned = int(agree_min(planned))  # every process must run the same epochs
    if cfg.mode == "finetune" and planned == 0:
        planned = 1  # asked for explicitly: one epoch even past the budget
        notes.append("one fine-tuning epoch runs past the time budget: --mode finetune asked for it")
    ui.log(f"Fine-tuning: {epoch_s:.0f} s per epoch measured, {planned} epoch(s) planned"
           + (f" within the {cfg.time_budget:.0f} s budget" if cfg.time_budget else ""))
    if planned == 0:
        # With --ensemble auto the rest of the budget goes to probes of partner backbones (training.grow),
        # which says what it did; otherwise point to that measured alternative (clothing: 88.0% -> 90.9%
        # validation, in 2.2x the default run's time) where the user reads why nothing more happened.
        others = ensemble_partners(cfg.backbone) if cfg.ensemble == "off" else []
        hint = (f"; for more accuracy, a larger --time-budget or an ensemble of probes: --backbone "
                f"{ENSEMBLE_SEP.join([cfg.backbone, *others])}" if others else "")
        notes.append(f"fine-tuning skipped: one epoch (~{epoch_s:.0f} s) does not fit the time budget{hint}")
    return FinetuneState(planned_epochs=planned), epoch_s


def _eval_seconds(model, valid_pixels, prep) -> float:
    """Seconds for one evaluation of the validation images, timed on (at most) 16 of them."""
    probe = valid_pixels[: min(16, len(valid_pixels))]
    # A GPU's first evaluation picks its kernels (6.3 s, then 0.025 s, for 16 images on an H100): time the second.
    for _ in range(2 if model_device(model).type == "cuda" else 1):
        t_eval = time.perf_counter()
        evaluate_logits(model, probe, prep)
    return (time.perf_counter() - t_eval) * len(valid_pixels) / len(probe)


def _margin(cfg: TrainConfig, eval_s: float, n_train: int, n_valid: int) -> float:
    """Seconds the budget keeps after fine-tuning: the final evaluation and writing the run, and the
    fine-tuned network's familiarity features (training.familiar), one more pass over the validation
    photos and (a sample of) the training photos."""
    margin = 2 * eval_s
    if cfg.familiarity:
        margin += eval_s * (min(n_train, MAX_BANK) + n_valid) / max(n_valid, 1)
    return margin


def resumed_time_limit(model, n_train: int, valid_pixels, prep, cfg: TrainConfig, t_start: float) -> float:
    """Seconds of fine-tuning left to a resumed run: ``cfg.time_budget`` counted from the resume (the
    interrupted run's plan came from its own budget, spent or not), less the margin planning keeps.
    The mirror check has run by now (on the probe, as at the start): no room kept for it."""
    eval_s = _eval_seconds(model, valid_pixels, prep)
    return cfg.time_budget - (time.perf_counter() - t_start) - _margin(cfg, eval_s, n_train, len(valid_pixels))


def budget_decisions(cfg: TrainConfig, ft_state: FinetuneState | None, growth: Growth | None,
                     resumed_with: float | None = None) -> tuple[dict, str | None]:
    """The settings under which a run with no time budget decides what this one's budget did.

    The budget is spent by measured speed: on a slower machine the same request plans fewer epochs,
    or gives fine-tuning's time to partner probes (clothing: 92.2% test on one machine, 93.5% on a
    faster one). Pinning the outcome (epochs, probe mode, the ensemble kept) and lifting the budget
    makes ``train --config`` on the run's file repeat the run anywhere. Nothing is pinned when the
    clock decided nothing (no budget; no fine-tuning wanted: ``--mode probe``, an ensemble backbone)
    or when the run was interrupted (``--resume`` follows the plan in its checkpoint). The caveat
    says what no setting repeats: fine-tuning cut short by the budget, against its own plan.

    A resumed run passes ``cfg`` with the budget that planned its epochs (the interrupted run's) and
    ``resumed_with``, the budget given with ``--resume``: it only stops epochs, counted from the resume.
    """
    if ft_state is None or ft_state.interrupted:
        return {}, None
    caveat = None
    if ft_state.out_of_time:
        stopped = f"after epoch {len(ft_state.history)} of {ft_state.planned_epochs}"
        caveat = (f"resumed with a {resumed_with:g} s time budget (counted from the resume), which stopped "
                  f"fine-tuning {stopped}; without it all {ft_state.planned_epochs} run" if resumed_with is not None
                  else f"fine-tuning stopped at the time budget {stopped}; without a budget all "
                       f"{ft_state.planned_epochs} run")
    if cfg.time_budget is None:
        return {}, caveat
    pinned: dict = {"time_budget": None}
    if growth is not None or ft_state.planned_epochs == 0:
        pinned["mode"] = "probe"
        if growth is not None and growth.kept.backbone != cfg.backbone:
            pinned["backbone"] = growth.kept.backbone
    elif ft_state.planned_epochs != cfg.epochs:
        pinned["epochs"] = ft_state.planned_epochs
    return pinned, caveat

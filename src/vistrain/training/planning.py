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
    probe = valid_pixels[: min(16, len(valid_pixels))]
    # A GPU's first evaluation picks its kernels (6.3 s, then 0.025 s, for 16 images on an H100): time the second.
    for _ in range(2 if model_device(model).type == "cuda" else 1):
        t_eval = time.perf_counter()
        evaluate_logits(model, probe, prep)
    eval_s = (time.perf_counter() - t_eval) * len(valid_pixels) / len(probe)
    if cfg.time_budget is not None:
        # Keep a margin for the final evaluation and for writing the run, and for the mirror check
        # that runs before the first epoch (features of the mirrored validation images: about one
        # evaluation's time, ONNX Runtime being no slower than the eager model).
        margin = (3 if ft_cfg.augment.flip == "auto" else 2) * eval_s
        # And for the fine-tuned network's familiarity features (training.familiar): one more pass
        # over the validation photos and (a sample of) the training photos.
        if cfg.familiarity:
            margin += eval_s * (min(len(canvases), MAX_BANK) + len(valid_pixels)) / max(len(valid_pixels), 1)
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


def budget_decisions(cfg: TrainConfig, ft_state: FinetuneState | None, growth: Growth | None
                     ) -> tuple[dict, str | None]:
    """The settings under which a run with no time budget decides what this one's budget did.

    The budget is spent by measured speed: on a slower machine the same request plans fewer epochs,
    or gives fine-tuning's time to partner probes (clothing: 92.2% test on one machine, 93.5% on a
    faster one). Pinning the outcome (epochs, probe mode, the ensemble kept) and lifting the budget
    makes ``train --config`` on the run's file repeat the run anywhere. Nothing is pinned when the
    clock decided nothing (no budget; no fine-tuning wanted: ``--mode probe``, an ensemble backbone)
    or when the run was interrupted (``--resume`` follows the plan in its checkpoint). The caveat
    says what no setting repeats: fine-tuning cut short by the budget, against its own plan.
    """
    if cfg.time_budget is None or ft_state is None or ft_state.interrupted:
        return {}, None
    pinned: dict = {"time_budget": None}
    if growth is not None or ft_state.planned_epochs == 0:
        pinned["mode"] = "probe"
        if growth is not None and growth.kept.backbone != cfg.backbone:
            pinned["backbone"] = growth.kept.backbone
    elif ft_state.planned_epochs != cfg.epochs:
        pinned["epochs"] = ft_state.planned_epochs
    caveat = None
    if ft_state.out_of_time:
        caveat = (f"fine-tuning stopped at the time budget after epoch {len(ft_state.history)} of "
                  f"{ft_state.planned_epochs}; without a budget all {ft_state.planned_epochs} run")
    return pinned, caveat

"""Learning-rate schedules for fine-tuning, as a factor of each group's peak rate per optimizer step.

``onecycle`` (default): warm up over the first 20% from peak/10, then cosine down to peak/1000;
the head starts from the linear probe, so the warm-up protects it. ``cosine-restarts``: three
cosine cycles from the peak to peak/100 (each restart is a new chance to leave a poor minimum).
``exp-decay``: from the peak down to peak/100, geometrically. ``constant``: the peak throughout.
"""

from __future__ import annotations

import math

import torch

SCHEDULES = ("onecycle", "cosine-restarts", "exp-decay", "constant")
RESTART_CYCLES = 3
FLOOR = 0.01  # cosine-restarts and exp-decay end at 1% of the peak


def check_schedule(name: str) -> str:
    if name not in SCHEDULES:
        raise ValueError(f"schedule {name!r} is not one of {', '.join(SCHEDULES)}")
    return name


def lr_factor(name: str, step: int, total: int) -> float:
    """Share of the peak learning rate at optimizer ``step`` (0-based) of ``total`` steps."""
    check_schedule(name)
    total = max(1, total)
    t = min(step, total - 1) / max(1, total - 1)
    if name == "constant":
        return 1.0
    if name == "exp-decay":
        return FLOOR ** t
    if name == "cosine-restarts":
        cycle = max(1, math.ceil(total / RESTART_CYCLES))
        u = (step % cycle) / max(1, cycle - 1) if cycle > 1 else 0.0
        return FLOOR + (1 - FLOOR) * 0.5 * (1 + math.cos(math.pi * min(u, 1.0)))
    # onecycle: torch's OneCycleLR(pct_start=0.2, div_factor=10, final_div_factor=100), step for step
    start, end = 0.1, 0.1 / 100
    warm_end, last = 0.2 * total - 1, total - 1
    if step <= warm_end:
        return start + (1 - start) * 0.5 * (1 - math.cos(math.pi * step / warm_end)) if warm_end > 0 else 1.0
    u = (step - warm_end) / max(1e-9, last - warm_end)
    return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * min(u, 1.0)))


def build_scheduler(name: str, optimizer: torch.optim.Optimizer, total_steps: int):
    """A scheduler stepping once per optimizer step; ``onecycle`` also cycles Adam's beta1, as before."""
    check_schedule(name)
    peaks = [g["lr"] for g in optimizer.param_groups]
    if name == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=peaks, total_steps=max(1, total_steps), pct_start=0.2,
            div_factor=10.0, final_div_factor=100.0,
        )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(name, step, total_steps))


def lr_curves(total_steps: int = 200) -> dict[str, list[float]]:
    """Factor of the peak rate at each step, per schedule: what the report plots."""
    return {name: [lr_factor(name, s, total_steps) for s in range(total_steps)] for name in SCHEDULES}

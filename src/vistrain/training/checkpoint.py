"""Resumable fine-tuning state in safetensors + JSON (optimizer included), never pickle.

Tensors are saved from the CPU and load onto it: a run interrupted on a GPU resumes anywhere."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from vistrain.training.finetune import EpochResult, FinetuneState

CHECKPOINT_DIR = "checkpoint"
SESSIONS_KEY = "session_seconds"  # state.json: each session's seconds, the latest last


def _flatten_optimizer(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for name, value in st.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{name}"] = value
    return tensors, {"param_groups": [{k: v for k, v in g.items()} for g in sd["param_groups"]], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in list(tensors.items()) + list(meta["scalars"].items()):
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: FinetuneState, extra: dict) -> None:
    d = run_dir / CHECKPOINT_DIR
    d.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(d / "last.safetensors"))
    if state.best_state is not None:
        save_file({k: v.detach().cpu().contiguous() for k, v in state.best_state.items()}, str(d / "best.safetensors"))
    tensors, meta = _flatten_optimizer(optimizer.state_dict())
    save_file(tensors, str(d / "optimizer.safetensors"))
    _write_state(d, {**_state_info(state, extra), "optimizer": meta})


def _state_info(state: FinetuneState, extra: dict) -> dict:
    return {
        "planned_epochs": state.planned_epochs,
        "history": [asdict(h) for h in state.history],
        "best_accuracy": state.best_accuracy,
        "best_score": state.best_score,
        "best_loss": state.best_loss,
        "best_epoch": state.best_epoch,
        "lowest_loss": state.lowest_loss,
        "lowest_loss_epoch": state.lowest_loss_epoch,
        **extra,
    }


def _write_state(d: Path, info: dict) -> None:
    tmp = d / "state.json.tmp"
    tmp.write_text(json.dumps(info, indent=1))
    tmp.replace(d / "state.json")  # the JSON is written last: it marks the checkpoint complete


def save_plan(run_dir: Path, state: FinetuneState, extra: dict) -> None:
    """The plan alone, before the first epoch: a run stopped during that epoch resumes from its
    start (the probe and the plan), instead of finding nothing to resume."""
    d = run_dir / CHECKPOINT_DIR
    d.mkdir(parents=True, exist_ok=True)
    for name in ("last.safetensors", "best.safetensors", "optimizer.safetensors"):
        (d / name).unlink(missing_ok=True)  # an earlier attempt's epochs are not this plan's
    _write_state(d, _state_info(state, extra))  # no optimizer: load_checkpoint reads it as the plan alone


@dataclass
class Resumable:
    """An interrupted fine-tuning, as saved after its last finished epoch (or, before the first
    epoch finished, its plan alone: no weights or optimizer then)."""

    model_state: dict | None
    optimizer_state: dict | None
    state: FinetuneState
    image_size: int
    probe_accuracy: float
    probe_loss: float
    probe_head: dict | None  # head weights of the linear probe, to compare against at the end
    probe_score: float | None = None  # macro F1 when classes are imbalanced, else accuracy
    # The time budget that planned the epochs (the interrupted run's; None: no limit), when the
    # checkpoint recorded it (older ones did not), and the planned seconds per epoch
    planned_by_budget: float | None = None
    planned_by_known: bool = False
    epoch_seconds: float | None = None


def save_probe_head(run_dir: Path, head: torch.nn.Module) -> None:
    d = run_dir / CHECKPOINT_DIR
    d.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}, str(d / "probe_head.safetensors"))


def load_checkpoint(run_dir: Path) -> Resumable | None:
    d = run_dir / CHECKPOINT_DIR
    if not (d / "state.json").exists():
        return None
    info = json.loads((d / "state.json").read_text())
    state = FinetuneState(
        planned_epochs=info["planned_epochs"],
        history=[EpochResult(**h) for h in info["history"]],
        best_accuracy=info["best_accuracy"],
        best_score=info.get("best_score", info["best_accuracy"]),
        best_loss=info["best_loss"],
        best_epoch=info["best_epoch"],
        lowest_loss=info["lowest_loss"],
        lowest_loss_epoch=info["lowest_loss_epoch"],
    )
    if (d / "best.safetensors").exists():
        state.best_state = load_file(str(d / "best.safetensors"))
    head = d / "probe_head.safetensors"
    trained = "optimizer" in info  # else the plan alone (save_plan): stopped during the first epoch
    return Resumable(
        model_state=load_file(str(d / "last.safetensors")) if trained else None,
        optimizer_state=(_unflatten_optimizer(load_file(str(d / "optimizer.safetensors")), info["optimizer"])
                         if trained else None),
        state=state,
        image_size=int(info["image_size"]),
        probe_accuracy=float(info["probe_accuracy"]),
        probe_loss=float(info["probe_loss"]),
        probe_head=load_file(str(head)) if head.exists() else None,
        probe_score=info.get("probe_score"),
        planned_by_budget=info.get("planned_by_budget"),
        planned_by_known="planned_by_budget" in info,
        epoch_seconds=info.get("epoch_seconds"),
    )


@dataclass
class Sessions:
    """The wall time of each ``train`` call of one run, as metrics.json times it (scan to last write):
    a run interrupted and resumed twice has three. Each checkpoint records them, this session's
    seconds so far included, so that a crash loses at most the time since the last epoch."""

    # The sessions before this one, as the checkpoint recorded them; None when it recorded none (one
    # from before vistrain kept them): the total is unknown then, and stays so.
    earlier: list[float] | None = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)  # this session's start

    def now(self) -> float:
        """This session's seconds so far."""
        return time.perf_counter() - self.started

    def seconds(self, now: float | None = None) -> list[float] | None:
        """Each session's seconds, this one's (``now``, or so far) last; None when the earlier are unknown."""
        if self.earlier is None:
            return None
        return [*self.earlier, round(self.now() if now is None else now, 1)]

    def record(self) -> dict:
        """What a checkpoint's state.json keeps of them: nothing when unknown."""
        seconds = self.seconds()
        return {} if seconds is None else {SESSIONS_KEY: seconds}


def recorded_sessions(run_dir: Path) -> list[float] | None:
    """The seconds of each session so far of the interrupted run in ``run_dir``, as its checkpoint
    recorded them; None when it recorded none (older checkpoints did not) or there is none."""
    try:
        info = json.loads((run_dir / CHECKPOINT_DIR / "state.json").read_text())
    except (OSError, ValueError):
        return None
    seconds = info.get(SESSIONS_KEY)
    return [float(s) for s in seconds] if isinstance(seconds, list) else None


def record_sessions(run_dir: Path, sessions: Sessions) -> None:
    """This session's seconds until now into the checkpoint (when there is one): the last epoch's
    checkpoint does not count what came after it (the interrupted epoch, the familiarity pass, the
    run's files), which the session took all the same."""
    d, record = run_dir / CHECKPOINT_DIR, sessions.record()
    if not record:
        return
    try:
        info = json.loads((d / "state.json").read_text())
    except (OSError, ValueError):
        return  # stopped before its plan was saved: nothing to resume, nothing to add to
    _write_state(d, {**info, **record})


def in_progress_file(run_dir: Path, name: str) -> Path:
    """Where an unfinished run keeps its ``split.csv`` or ``train_config.yaml``: with its checkpoint,
    so that an earlier finished run in the same folder stays whole (model, metrics and split agreeing)
    until the new one is written over it. Checkpoints from before this kept them in ``run_dir``."""
    kept = run_dir / CHECKPOINT_DIR / name
    return kept if kept.exists() else run_dir / name


def remove_checkpoint(run_dir: Path) -> None:
    shutil.rmtree(run_dir / CHECKPOINT_DIR, ignore_errors=True)

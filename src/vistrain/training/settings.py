"""Every training setting, validated where it enters (CLI, config file, Python), then passed down."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vistrain.data.augment import AugmentConfig
from vistrain.data.dataset import DataConfig
from vistrain.data.transforms import RESIZE_METHODS
from vistrain.models.registry import ensemble_members, get_backbone
from vistrain.training.balance import resolve_balance
from vistrain.training.device import resolve_device
from vistrain.training.grow import ENSEMBLES
from vistrain.training.schedules import check_schedule

MODES = ("auto", "probe", "finetune")


class TrainError(ValueError):
    """Settings that cannot work; the message names the setting and its value."""


@dataclass
class TrainConfig:
    """Every training setting, validated on construction (the edge), then passed down unchanged."""

    data: DataConfig
    out: Path
    backbone: str = "efficientnet_lite0"
    image_size: int | None = None  # None: chosen from the training images' sizes
    resize: str = "crop"
    mode: str = "auto"
    epochs: int = 8
    time_budget: float | None = 600.0  # seconds for the whole run; None: no limit
    batch_size: int = 32
    # After a linear probe the network already fits the training set (loss ~0.05 on climbing):
    # a small learning rate and no label smoothing refine it instead of first undoing the head
    # (measured: smoothing 0.1 cost 3.6 points after epoch 1; lr 1e-3 / 5e-4 dipped 8-15 points).
    lr: float = 1e-4
    label_smoothing: float = 0.0
    patience: int = 3
    probe_c: float | None = None  # None: chosen by validation log-loss (probe.C_GRID)
    seed: int = 0
    resume: bool = False
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    weight_decay: float = 0.01
    dropout: float = 0.0  # before the head, while fine-tuning
    balance: str = "auto"  # auto|sampler|loss|none, see training.balance
    schedule: str = "onecycle"  # see training.schedules
    device: str = "auto"  # auto|cpu|cuda, see training.device; the run records the one used
    max_memory: float | None = None  # GB for the whole process while fine-tuning on the CPU; None: half the free memory
    # auto: when fewer than MIN_FINETUNE_EPOCHS fit the budget, spend it on probes of partner backbones (training.grow)
    ensemble: str = "auto"
    # False: no familiarity check (one pass fewer over the photos: sweep trials, which ship nothing)
    familiarity: bool = True

    def __post_init__(self) -> None:
        get_backbone(self.backbone)  # raises with the list of choices
        if self.mode not in MODES:
            raise TrainError(f"mode {self.mode!r} is not one of {', '.join(MODES)}")
        if self.mode == "finetune" and len(ensemble_members(self.backbone)) > 1:
            raise TrainError(f"backbone {self.backbone!r} is an ensemble: it trains linear probes only "
                             f"(--mode probe or auto), not --mode finetune")
        if self.ensemble not in ENSEMBLES:
            raise TrainError(f"ensemble {self.ensemble!r} is not one of {', '.join(ENSEMBLES)}")
        if not isinstance(self.familiarity, bool):
            raise TrainError(f"familiarity must be true or false (got {self.familiarity!r})")
        if self.epochs < 1:
            raise TrainError(f"epochs must be at least 1 (got {self.epochs})")
        if self.time_budget is not None and self.time_budget <= 0:
            raise TrainError(f"time budget must be positive seconds (got {self.time_budget})")
        if self.batch_size < 1:
            raise TrainError(f"batch size must be at least 1 (got {self.batch_size})")
        if self.max_memory is not None and not self.max_memory > 0:
            raise TrainError(f"max memory must be positive gigabytes (got {self.max_memory})")
        if not 0 < self.lr < 1:
            raise TrainError(f"learning rate {self.lr} must be between 0 and 1")
        if not 0 <= self.label_smoothing < 1:
            raise TrainError(f"label smoothing {self.label_smoothing} must be within [0, 1)")
        if self.image_size is not None and not 32 <= self.image_size <= 1024:
            raise TrainError(f"image size {self.image_size} is outside 32..1024 pixels")
        if self.resize not in RESIZE_METHODS:
            raise TrainError(f"resize method {self.resize!r} is not one of {', '.join(RESIZE_METHODS)}")
        if self.patience < 1:
            raise TrainError(f"patience must be at least 1 epoch (got {self.patience})")
        if self.probe_c is not None and (isinstance(self.probe_c, (bool, str)) or not self.probe_c > 0):
            raise TrainError(f"probe regularisation C must be a positive number, or auto (got {self.probe_c!r})")
        if not 0 <= self.weight_decay < 1:
            raise TrainError(f"weight decay {self.weight_decay} must be within [0, 1)")
        if not 0 <= self.dropout < 1:
            raise TrainError(f"dropout {self.dropout} must be within [0, 1)")
        data = Path(self.data.root)
        if data.is_dir() and Path(self.out).resolve() == data.resolve():
            # The run's files and the report's error copies would land among the photos, and the next
            # train would read errors/ as a class.
            raise TrainError(f"--out {self.out} is the data folder itself; give the run a folder of its own "
                             f"(e.g. runs/NAME)")
        try:
            resolve_balance(self.balance, 1.0)
            check_schedule(self.schedule)
            resolve_device(self.device)  # an unknown name, or cuda where PyTorch sees no GPU
        except ValueError as exc:
            raise TrainError(str(exc)) from None

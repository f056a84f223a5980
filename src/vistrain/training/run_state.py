"""What the training stages share: the run's settled facts (:class:`RunState`) and the linear probe
(:class:`ProbeState`) that fine-tuning and partner backbones must beat, by one rule (:func:`finetuning_won`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from vistrain.data.pixel_cache import PixelCache
from vistrain.data.transforms import Preprocessing
from vistrain.progress import Reporter
from vistrain.training.checkpoint import Resumable, Sessions
from vistrain.training.finetune import FinetuneState
from vistrain.training.grow import Probe
from vistrain.training.settings import TrainConfig


@dataclass
class RunState:
    """What every stage reads, settled before the first image is decoded; and the notes they add."""

    cfg: TrainConfig
    ui: Reporter
    t_start: float
    resumed: Resumable | None
    prep: Preprocessing
    classes: list[str]
    splits: dict[str, list]  # "train", "valid" and "test" records
    y_train: np.ndarray
    y_valid: np.ndarray
    members: list[str]  # the backbones whose features the probe reads (one unless an ensemble)
    want_finetune: bool
    ratio: float  # largest class over smallest, in the training split
    balance: str  # the imbalance correction in use
    select_by: str  # "accuracy", or "macro_f1" when classes are imbalanced
    device: torch.device
    pixel_cache: PixelCache | None
    notes: list[str] = field(default_factory=list)  # for the summary and metrics.json
    sessions: Sessions = field(default_factory=Sessions)  # the run's training time, which checkpoints keep

    @property
    def train(self) -> list:
        return self.splits["train"]

    @property
    def valid(self) -> list:
        return self.splits["valid"]


@dataclass
class ProbeState:
    """The linear probe; when resuming, what the checkpoint recorded of it."""

    state: dict[str, torch.Tensor]  # the whole classifier with the probe's head, to go back to
    accuracy: float
    loss: float
    score: float  # accuracy, or macro F1 when classes are imbalanced
    valid_logits: np.ndarray | None = None  # None when resuming: computed again if the probe is kept
    # A fresh run's only (partner probes build on them):
    single: Probe | None = None
    features: dict[str, np.ndarray] | None = None  # pooled "train" and "valid" features
    c: list[float] = field(default_factory=list)  # the regularisation chosen per member
    class_weight: str | None = None


def state_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def finetuning_won(probe: ProbeState, ft_state: FinetuneState) -> bool:
    """The rule that picks the best epoch: accuracy (macro F1 when imbalanced), then validation loss on ties."""
    return (ft_state.best_score, -ft_state.best_loss) > (probe.score, -probe.loss)

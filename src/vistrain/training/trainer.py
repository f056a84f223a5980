"""The default recipe: frozen-feature probe first (seconds), then fine-tuning if time allows; keep the better."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from vistrain.cache import PIXEL_LIMIT_ENV, Trimmed, pixel_cache_limit, trim_pixels
from vistrain.data.augment import AugmentConfig
from vistrain.data.dataset import DataConfig, DatasetIndex
from vistrain.data.pixel_cache import PixelCache
from vistrain.data.split import read_split
from vistrain.data.transforms import RESIZE_METHODS, Preprocessing
from vistrain.familiarity import Familiarity
from vistrain.memory import (
    release_freed_memory,
    training_micro_batch,
)
from vistrain.models.classifier import ImageClassifier, ModelConfig, build_classifier
from vistrain.models.registry import (
    ensemble_members,
    get_backbone,
)
from vistrain.progress import Reporter, SilentReporter
from vistrain.training.balance import (
    IMBALANCED_RATIO,
    imbalance_ratio,
    probe_class_weight,
    resolve_balance,
)
from vistrain.training.checkpoint import (
    in_progress_file,
    load_checkpoint,
    save_checkpoint,
    save_probe_head,
)
from vistrain.training.device import (
    describe,
    resolve_device,
    uses_amp,
)
from vistrain.training.distributed import is_main, world_size
from vistrain.training.familiar import fit_familiarity
from vistrain.training.feature_cache import FeatureCache
from vistrain.training.features import (
    backbone_features,
    cached_features,
    feature_caches,
)
from vistrain.training.finetune import (
    FinetuneConfig,
    FinetuneState,
    evaluate_logits,
    finetune,
    micro_batch_size,
    train_preprocessing,
)
from vistrain.training.grow import (
    ENSEMBLES,
    Growth,
    grow_ensemble,
    plan_growth,
    score_probe,
)
from vistrain.training.mirror import MirrorCheck, mirror_check, mirrored
from vistrain.training.pixels import decode_all
from vistrain.training.planning import (
    MIN_FINETUNE_EPOCHS,
    activation_budget,
    budget_decisions,
    plan_finetuning,
)
from vistrain.training.probe import describe_choice, fit_ensemble_probe, probe_logits
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
        try:
            resolve_balance(self.balance, 1.0)
            check_schedule(self.schedule)
            resolve_device(self.device)  # an unknown name, or cuda where PyTorch sees no GPU
        except ValueError as exc:
            raise TrainError(str(exc)) from None


@dataclass
class TrainResult:
    model: ImageClassifier
    model_config: ModelConfig
    stage: str  # "probe" or "finetune": which one was kept
    probe_accuracy: float
    finetune: FinetuneState | None
    valid_logits: np.ndarray
    seconds: float
    notes: list[str] = field(default_factory=list)
    device: str = "cpu"  # where it trained, e.g. "cuda:0"
    amp: bool = False  # fine-tuning steps in float16 mixed precision
    mirror: MirrorCheck | None = None  # whether fine-tuning flipped its crops, and why (flip "auto")
    test_logits: np.ndarray | None = None  # the kept probe on the test split, from (cached) features
    # Settings that repeat what the time budget decided from this machine's speed (train_config.yaml),
    # and what even they cannot repeat
    pinned: dict = field(default_factory=dict)
    pin_caveat: str | None = None
    familiarity: Familiarity | None = None  # which photos are unlike the training ones (None: no check)


def choose_image_size(index: DatasetIndex, backbone: str) -> int:
    """Largest of native, native+64, native+128 px not above the median shorter side of the photos.

    Bigger inputs let a frozen backbone see small details (measured: climbing 11.0% -> 7.3% error,
    ants/bees 94.1% -> 96.7% going 224 -> 352 px), but upsampling small images adds nothing.
    """
    native = get_backbone(backbone).native_size
    shorter = sorted(min(r.width, r.height) for r in index.split("train"))
    median = shorter[len(shorter) // 2] if shorter else native
    return max([native] + [s for s in (native + 64, native + 128) if s <= median])


def _restore_split(index: DatasetIndex, run_dir: Path) -> None:
    saved = read_split(in_progress_file(run_dir, "split.csv"))
    for r in index.records:
        if r.path in saved:
            r.split = saved[r.path]


def run_training(index: DatasetIndex, cfg: TrainConfig, reporter: Reporter | None = None,
                 on_epoch: Callable[[int, float], None] | None = None) -> TrainResult:
    """``on_epoch(epoch, validation score)`` after each fine-tuning epoch (a sweep prunes by raising)."""
    ui = reporter or SilentReporter()
    t_start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    resumed = load_checkpoint(cfg.out) if cfg.resume else None
    if cfg.resume and resumed is None:
        raise TrainError(f"{cfg.out}: nothing to resume (no checkpoint/state.json)")
    if resumed is not None:
        _restore_split(index, cfg.out)

    spec = get_backbone(cfg.backbone)
    size = resumed.image_size if resumed else (cfg.image_size or choose_image_size(index, cfg.backbone))
    prep: Preprocessing = spec.preprocessing(size, cfg.resize)
    classes = index.classes
    train, valid = index.split("train"), index.split("valid")
    y_train = np.array([classes.index(r.label) for r in train])
    y_valid = np.array([classes.index(r.label) for r in valid])
    members = ensemble_members(cfg.backbone)
    want_finetune = cfg.mode in ("auto", "finetune") and len(members) == 1
    ratio = imbalance_ratio(y_train, len(classes))
    balance = resolve_balance(cfg.balance, ratio)
    select_by = "macro_f1" if ratio >= IMBALANCED_RATIO else "accuracy"
    if ratio >= IMBALANCED_RATIO or balance != "none":
        ui.log(f"Classes imbalanced {ratio:.1f}:1 (largest/smallest); correction: {balance}"
               f" (--balance {cfg.balance}); best model chosen by {select_by.replace('_', ' ')}")
    ui.log(f"Backbone {cfg.backbone}, input {size} px ({cfg.resize}), {len(train)} train / {len(valid)} valid images")
    device = resolve_device(cfg.device)
    if device.type != "cpu":
        ui.log(f"Device {describe(device)}" + (", mixed precision (float16) for fine-tuning" if uses_amp(device) else ""))

    train_pixels = canvases = valid_pixels = None
    pixel_cache = PixelCache(cfg.data.cache_dir, prep) if cfg.data.cache_dir else None
    # Pixel-cache entries touched from now on are this run's: never trimmed. (2 s early: some file
    # systems keep modification times to the second or two.)
    used_since = time.time() - 2
    pixel_limit = pixel_cache_limit() if pixel_cache is not None else None  # a bad setting fails now
    if pixel_limit is not None and pixel_limit != float("inf"):
        # Make room before decoding, not only at the end: a crashed run or sweep trial leaves its
        # entries behind until some run ends, and this run's new ones would stack on top of them.
        _trim_pixel_cache(ui, pixel_cache, pixel_limit, used_since, index, train + valid if want_finetune else [])
    if want_finetune:  # fine-tuning reads every image; the probe alone may need none (cached features)
        with ui.stage("decode", len(train) + len(valid)) as advance:
            # With the disk cache, canvases stay on disk and the training set's eval views are
            # read back only if features must be computed; without it, one pass makes both.
            train_pixels, canvases = decode_all([r.path for r in train], prep, canvases=True, progress=advance,
                                                cache=pixel_cache, keys=[r.sha1 for r in train],
                                                pixels=pixel_cache is None)
            valid_pixels, _ = decode_all([r.path for r in valid], prep, progress=advance,
                                         cache=pixel_cache, keys=[r.sha1 for r in valid])
        if pixel_cache is not None:
            ui.log(f"  pixel cache: {pixel_cache.disk_bytes() / 1e6:.0f} MB in {pixel_cache.folder}")

    model_cfg = ModelConfig(cfg.backbone, classes, prep, dropout=cfg.dropout)
    model = build_classifier(model_cfg).to(device, memory_format=torch.channels_last)
    caches = feature_caches(cfg.data.cache_dir, cfg.backbone, prep)  # one per member, read from disk once
    if resumed is None:
        f_train = backbone_features(ui, model.backbone, train, prep, caches, train_pixels, pixel_cache, "training")
        f_valid = backbone_features(ui, model.backbone, valid, prep, caches, valid_pixels, pixel_cache, "validation")
        train_pixels = None  # fine-tuning reads the canvases; free the eval views of the training set
        widths = [get_backbone(m).num_features for m in members]
        class_weight = probe_class_weight(balance)
        w, b, heads = fit_ensemble_probe(f_train, y_train, len(classes), widths, valid=(f_valid, y_valid),
                                         C=cfg.probe_c, seed=cfg.seed, class_weight=class_weight)
        probe_c = [h.C for h in heads]
        choice = describe_choice(heads, members)
        single = score_probe(cfg.backbone, w, b, f_valid, y_valid, len(classes), select_by)
        probe_valid_logits, probe_acc, probe_loss, probe_score = single.valid_logits, single.accuracy, single.loss, single.score
        if len(members) > 1:
            ui.log("Ensemble of linear probes (logits averaged); alone on validation: " + ", ".join(
                f"{m} {_accuracy(probe_logits(f, h.weight, h.bias), y_valid):.1%}"
                for m, f, h in zip(members, np.split(f_valid, np.cumsum(widths)[:-1], axis=1), heads)))
        with torch.no_grad():
            model.head.weight.copy_(w)
            model.head.bias.copy_(b)
    else:
        if resumed.probe_head is not None:
            model.head.load_state_dict(resumed.probe_head)
        probe_valid_logits, probe_c, choice = None, None, None
        probe_acc, probe_loss = resumed.probe_accuracy, resumed.probe_loss
        probe_score = resumed.probe_score if resumed.probe_score is not None else probe_acc
    probe_state = {k: v.clone() for k, v in model.state_dict().items()}
    ui.log(f"Linear probe: validation accuracy {probe_acc:.1%} ({time.perf_counter() - t_start:.0f} s so far)")

    notes: list[str] = []
    if choice:
        ui.log("  " + choice)
        notes.append(choice)
    if len(members) > 1 and cfg.mode == "auto":
        notes.append(f"an ensemble of {len(members)} backbones trains linear probes only: no fine-tuning")
    if ratio >= IMBALANCED_RATIO or balance != "none":
        notes.append(f"classes imbalanced {ratio:.1f}:1; correction: {balance}; best model by {select_by.replace('_', ' ')}")
    ft_state: FinetuneState | None = None
    growth: Growth | None = None
    check: MirrorCheck | None = None
    if want_finetune:
        ft_cfg = FinetuneConfig(
            epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, label_smoothing=cfg.label_smoothing,
            patience=cfg.patience, augment=cfg.augment, seed=cfg.seed, weight_decay=cfg.weight_decay,
            schedule=cfg.schedule, balance=balance, select_by=select_by,
            micro_batch=training_micro_batch(cfg.batch_size, train_preprocessing(prep).size,
                                             activation_budget(cfg, device)),
        )
        if micro_batch_size(ft_cfg) < ft_cfg.batch_size:
            why = (f"batches of {ft_cfg.batch_size} ran as passes of up to {ft_cfg.micro_batch} images, for memory "
                   f"(gradients summed: the same training, ~20% slower)")
            ui.log("  " + why)
            notes.append(why)
        if resumed is not None:
            if ft_cfg.augment.flip == "auto":  # on the probe, before the fine-tuned weights replace it
                check, ft_cfg = _decide_flips(ui, model, valid, valid_pixels, y_valid, prep, caches[0], None, ft_cfg, notes)
            ft_state = resumed.state
            model.load_state_dict(resumed.model_state)
            ui.log(f"Resuming fine-tuning after epoch {len(ft_state.history)} of {ft_state.planned_epochs}")
        else:
            release_freed_memory()  # what decoding and the features' ONNX session used, before training
            ft_state, epoch_s = plan_finetuning(ui, model, canvases, y_train, valid_pixels, prep, ft_cfg, cfg, t_start, notes)
            if is_main():
                save_probe_head(cfg.out, model.head)
            if (ft_state.planned_epochs < MIN_FINETUNE_EPOCHS and cfg.mode == "auto" and cfg.ensemble == "auto"
                    and cfg.time_budget is not None and world_size() == 1):
                # Under torchrun each rank would time, and might choose, differently: one process only.
                # The whole rest of the budget: the margin plan_finetuning kept was for fine-tuning's final evaluation.
                splits = {"train": train, "valid": valid, "test": index.split("test")}
                plan = plan_growth(ui, cfg.backbone, splits, prep, cfg.data.cache_dir,
                                   cfg.time_budget - (time.perf_counter() - t_start), valid_pixels, model.backbone)
                if plan is not None and (plan.fits or ft_state.planned_epochs == 0):
                    if ft_state.planned_epochs:
                        notes.append(f"fine-tuning skipped: {ft_state.planned_epochs} epoch(s) of ~{epoch_s:.0f} s fit "
                                     f"the time budget, and one-cycle fine-tuning that short has not beaten the probe "
                                     f"in our measurements; the time went to probes of other backbones")
                    ft_state = FinetuneState(planned_epochs=0)
                    growth = grow_ensemble(ui, single, plan, splits, {"train": y_train, "valid": y_valid},
                                           {"train": f_train, "valid": f_valid}, prep, cfg.data.cache_dir, valid_pixels,
                                           len(classes), select_by, [*probe_c, cfg.probe_c], cfg.seed, class_weight,
                                           pixel_cache)
                    ui.log("  " + growth.note)
                    notes.append(growth.note)
            if ft_state.planned_epochs > 0 and ft_cfg.augment.flip == "auto":
                # Only now that epochs will run: the check costs a pass over the mirrored validation
                # images (clothing: 18 s), time that otherwise goes to partner probes. The model is
                # still the probe: planning measured steps without taking one.
                check, ft_cfg = _decide_flips(ui, model, valid, valid_pixels, y_valid, prep, caches[0],
                                              probe_valid_logits, ft_cfg, notes)
        if ft_state.planned_epochs > len(ft_state.history):
            extra = {"image_size": size, "probe_accuracy": probe_acc, "probe_loss": probe_loss, "probe_score": probe_score}
            with ui.stage("fine-tune", (ft_state.planned_epochs - len(ft_state.history)) * len(canvases)) as advance:
                ft_state = finetune(
                    model, canvases, y_train, valid_pixels, y_valid, prep, ft_cfg, ft_state,
                    optimizer_state=resumed.optimizer_state if resumed else None,
                    on_epoch=_epoch_logger(ui, model, cfg.out, extra, on_epoch), progress=advance,
                )
            if ft_state.stop_reason:
                notes.append(ft_state.stop_reason)
    if growth is not None and growth.kept is not single:  # the ensemble won: it becomes the probe stage's model
        model_cfg = ModelConfig(growth.kept.backbone, classes, prep, dropout=cfg.dropout)
        model = build_classifier(model_cfg).to(device, memory_format=torch.channels_last)
        with torch.no_grad():
            model.head.weight.copy_(growth.kept.weight)
            model.head.bias.copy_(growth.kept.bias)
        probe_state = {k: v.clone() for k, v in model.state_dict().items()}
        probe_valid_logits = growth.kept.valid_logits
        caches = feature_caches(cfg.data.cache_dir, growth.kept.backbone, prep)

    ft_acc = ft_state.best_accuracy if ft_state and ft_state.best_state is not None else None
    # The same rule that picks the best epoch: accuracy (macro F1 when imbalanced), then validation loss on ties.
    ft_better = ft_acc is not None and (ft_state.best_score, -ft_state.best_loss) > (probe_score, -probe_loss)
    if ft_acc is not None and (cfg.mode == "finetune" or ft_better):
        stage = "finetune"
        model.load_state_dict(ft_state.best_state)
        valid_logits = ft_state.best_logits if ft_state.best_logits is not None else evaluate_logits(model, valid_pixels, prep)
    else:
        stage = "probe"
        if ft_acc is not None:
            notes.append(f"kept the linear probe: fine-tuning reached {ft_acc:.1%} on validation "
                         f"(loss {ft_state.best_loss:.3f}), the probe {probe_acc:.1%} (loss {probe_loss:.3f})")
        model.load_state_dict(probe_state)
        valid_logits = probe_valid_logits if probe_valid_logits is not None else evaluate_logits(model, valid_pixels, prep)
    test_logits = None
    test = index.split("test")
    if stage == "probe" and test:
        # The probe is a head on cached features: the test images' features are computed once (ONNX
        # Runtime) and a later run on the same data reads them back instead of running the network.
        f_test = backbone_features(ui, model.backbone, test, prep, caches, pixel_cache=pixel_cache, split="test")
        test_logits = probe_logits(f_test, model.head.weight.detach().cpu(), model.head.bias.detach().cpu())
    known = (f_train, f_valid) if stage == "probe" and resumed is None and model_cfg.backbone == cfg.backbone else None
    familiarity = None
    if not cfg.familiarity:
        notes.append("no familiarity check (familiarity: false): predict cannot say which photos are unlike "
                     "the training ones")
    elif stage == "finetune" and ft_state.interrupted:  # Ctrl-C asked to stop now, not after one more pass
        notes.append("no familiarity check (training was interrupted): --resume finishes the run with it")
    else:
        familiarity = fit_familiarity(ui, stage, model, model_cfg.backbone, train, y_train, valid, prep, caches,
                                      pixel_cache, valid_pixels, cfg.seed, known)
    result = TrainResult(model.eval(), model_cfg, stage, probe_acc, ft_state, valid_logits,
                         time.perf_counter() - t_start, notes, str(device),
                         uses_amp(device) and bool(ft_state and ft_state.history), check, test_logits,
                         *budget_decisions(cfg, ft_state, growth))
    result.familiarity = familiarity
    if pixel_limit is not None:  # last: every entry this run wrote or read is spared
        _say_trimmed(ui, trim_pixels(cfg.data.cache_dir, pixel_limit, used_since), pixel_limit)
    return result


def _trim_pixel_cache(ui: Reporter, pixel_cache: PixelCache, limit: float, since: float, index: DatasetIndex,
                      to_decode: list) -> None:
    """Trim the pixel cache to its limit less the room that the entries of ``to_decode`` not yet in
    it will take (fine-tuning decodes every image), sparing this run's images at its input size."""
    mine = {pixel_cache.entry_file(r.sha1) for r in index.records if r.sha1}
    new = sum(not pixel_cache.has(r.sha1) for r in to_decode if r.sha1)
    room = max(limit - new * pixel_cache.entry_bytes(), 0.0)
    _say_trimmed(ui, trim_pixels(pixel_cache.root, room, since, keep=mine), limit,
                 f" with room for this run's {new} new images" if new else "")


def _say_trimmed(ui: Reporter, trimmed: Trimmed, limit: float, room: str = "") -> None:
    if trimmed.files:
        ui.log(f"  pixel cache over its {limit / 1e9:g} GB limit (${PIXEL_LIMIT_ENV}){room}: removed the "
               f"{trimmed.files} {'entry' if trimmed.files == 1 else 'entries'} used longest ago "
               f"({trimmed.bytes / 1e6:.0f} MB; {trimmed.total / 1e9:.1f} GB left)")


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean())


def _decide_flips(ui: Reporter, model, valid, valid_pixels: np.ndarray, y_valid: np.ndarray, prep: Preprocessing,
                  cache: FeatureCache, logits: np.ndarray | None, ft_cfg: FinetuneConfig,
                  notes: list[str]) -> tuple[MirrorCheck, FinetuneConfig]:
    """The mirror check, printed, and ``ft_cfg`` flipping its crops or not accordingly: the probe
    (``model.head``) on the validation images (``logits``, or from the cached features when resuming)
    and on their mirror images (features cached too: a second run pays nothing)."""
    w, b = model.head.weight.detach().cpu(), model.head.bias.detach().cpu()
    if logits is None:
        logits = probe_logits(cached_features(ui, model.backbone, valid, prep, cache, valid_pixels), w, b)
    flipped = [replace(r, sha1=f"{r.sha1}-mirrored") for r in valid]
    f_mirrored = cached_features(ui, model.backbone, flipped, prep, cache, mirrored(valid_pixels))
    check = mirror_check(y_valid, logits.argmax(1), probe_logits(f_mirrored, w, b).argmax(1))
    ui.log("  " + check.describe())
    if not check.keep_flips:
        notes.append(check.describe())
    return check, replace(ft_cfg, augment=replace(ft_cfg.augment, flip=check.keep_flips))


def _epoch_logger(ui: Reporter, model, out: Path, extra: dict, then: Callable[[int, float], None] | None = None):
    def on_epoch(st: FinetuneState, opt) -> None:
        if is_main():  # first: an interruption while printing loses nothing
            save_checkpoint(out, model, opt, st, extra)
        h = st.history[-1]
        ui.log(f"  epoch {h.epoch}/{st.planned_epochs}: train loss {h.train_loss:.3f}, "
               f"valid loss {h.valid_loss:.3f}, valid accuracy {h.valid_accuracy:.1%} "
               f"({h.seconds:.0f} s, {h.data_wait / max(h.seconds, 1e-9):.0%} waiting for data)")
        if then is not None:
            then(h.epoch, st.best_score)  # the best so far: pruning compares trials at equal epochs

    return on_epoch

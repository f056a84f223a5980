"""The default recipe: frozen-feature probe first (seconds), then fine-tuning if time allows; keep the better.

:func:`run_training` runs the stages in order, each one function:

- ``_start``: input size, labels, class balance and device, printed (a ``RunState`` every stage reads);
- ``_decode``: training canvases and validation pixels, only when fine-tuning will read them;
- ``probe_stage`` (``training.probe_stage``): frozen features and a logistic-regression head (or what
  a resumed run recorded);
- ``_finetune_stage``: the epochs that fit the budget, or probes of partner backbones when too few
  fit (``training.growth_stage``), or after fine-tuning lost to the probe;
- ``_keep_better``: the probe or the best fine-tuned epoch, by the rule that picks epochs;
- then the kept probe's test logits and the familiarity check.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from vistrain.cache import PIXEL_LIMIT_ENV, Trimmed, pixel_cache_limit, trim_pixels
from vistrain.data.dataset import DatasetIndex
from vistrain.data.pixel_cache import PixelCache
from vistrain.data.split import read_split
from vistrain.data.transforms import Preprocessing
from vistrain.familiarity import Familiarity
from vistrain.memory import release_freed_memory, training_micro_batch
from vistrain.models.classifier import ImageClassifier, ModelConfig, build_classifier
from vistrain.models.registry import ensemble_members, get_backbone
from vistrain.progress import Reporter, SilentReporter
from vistrain.training.balance import (
    IMBALANCED_RATIO,
    imbalance_ratio,
    resolve_balance,
)
from vistrain.training.checkpoint import (
    CHECKPOINT_DIR,
    Resumable,
    Sessions,
    in_progress_file,
    load_checkpoint,
    recorded_sessions,
    save_checkpoint,
    save_plan,
    save_probe_head,
)
from vistrain.training.device import describe, resolve_device, uses_amp
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
from vistrain.training.grow import Growth
from vistrain.training.growth_stage import finetuning_lost, grow_after, grow_instead
from vistrain.training.mirror import MirrorCheck, mirror_check, mirrored
from vistrain.training.pixels import decode_all
from vistrain.training.planning import (
    MIN_FINETUNE_EPOCHS,
    activation_budget,
    budget_decisions,
    plan_finetuning,
    resumed_time_limit,
)
from vistrain.training.probe import probe_logits
from vistrain.training.probe_stage import probe_stage
from vistrain.training.run_state import ProbeState, RunState, finetuning_won, state_copy
from vistrain.training.settings import MODES, TrainConfig, TrainError

__all__ = ["MODES", "TrainConfig", "TrainError", "TrainResult", "choose_image_size", "run_training"]


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
    # The time budget that planned the fine-tuning epochs: the run's own, or on resume the interrupted
    # run's (the one given with --resume only stopped epochs); what train_config.yaml records
    planned_by_budget: float | None = None


def choose_image_size(index: DatasetIndex, backbone: str) -> int:
    """Largest of native, native+64, native+128 px not above the median shorter side of the photos.

    Bigger inputs let a frozen backbone see small details (measured: climbing 11.0% -> 7.3% error,
    ants/bees 94.1% -> 96.7% going 224 -> 352 px), but upsampling small images adds nothing.
    """
    native = get_backbone(backbone).native_size
    shorter = sorted(min(r.width, r.height) for r in index.split("train"))
    median = shorter[len(shorter) // 2] if shorter else native
    return max([native] + [s for s in (native + 64, native + 128) if s <= median])


def run_training(index: DatasetIndex, cfg: TrainConfig, reporter: Reporter | None = None,
                 on_epoch: Callable[[int, float], None] | None = None, sessions: Sessions | None = None
                 ) -> TrainResult:
    """``on_epoch(epoch, validation score)`` after each fine-tuning epoch (a sweep prunes by raising).
    ``sessions``: the run's training time so far, which each checkpoint records (api.train's, timed from
    its start; by default the checkpoint's, timed from now)."""
    ui = reporter or SilentReporter()
    t_start = time.perf_counter()
    if sessions is None:
        sessions = Sessions(recorded_sessions(cfg.out) if cfg.resume else [], t_start)
    torch.manual_seed(cfg.seed)
    resumed = load_checkpoint(cfg.out) if cfg.resume else None
    if cfg.resume and resumed is None:
        raise TrainError(nothing_to_resume(cfg.out))
    if resumed is not None:
        _restore_split(index, cfg.out)
    run = _start(index, cfg, ui, resumed, t_start, sessions)

    # Pixel-cache entries touched from now on are this run's: never trimmed. (2 s early: some file
    # systems keep modification times to the second or two.)
    used_since = time.time() - 2
    pixel_limit = pixel_cache_limit() if run.pixel_cache is not None else None  # a bad setting fails now
    if pixel_limit is not None and pixel_limit != float("inf"):
        # Make room before decoding, not only at the end: a crashed run or sweep trial leaves its
        # entries behind until some run ends, and this run's new ones would stack on top of them.
        _trim_pixel_cache(ui, run.pixel_cache, pixel_limit, used_since, index,
                          run.train + run.valid if run.want_finetune else [])
    train_pixels, canvases, valid_pixels = _decode(run)

    model_cfg = ModelConfig(cfg.backbone, run.classes, run.prep, dropout=cfg.dropout)
    model = build_classifier(model_cfg).to(run.device, memory_format=torch.channels_last)
    caches = feature_caches(cfg.data.cache_dir, cfg.backbone, run.prep)  # one per member, read from disk once
    probe = probe_stage(run, model, caches, train_pixels, valid_pixels)
    del train_pixels  # fine-tuning reads the canvases: free the eval views of the training set
    if len(run.members) > 1 and cfg.mode == "auto":
        run.notes.append(f"an ensemble of {len(run.members)} backbones trains linear probes only: no fine-tuning")
    if run.ratio >= IMBALANCED_RATIO or run.balance != "none":
        run.notes.append(f"classes imbalanced {run.ratio:.1f}:1; correction: {run.balance}; "
                         f"best model by {run.select_by.replace('_', ' ')}")

    ft_state, growth, check = None, None, None
    if run.want_finetune:
        ft_state, growth, check = _finetune_stage(run, model, probe, canvases, valid_pixels, caches, on_epoch)
        if growth is None and finetuning_lost(run, probe, ft_state):
            growth, probe = grow_after(run, model, probe, ft_state, caches, valid_pixels)
    if growth is not None and growth.kept is not probe.single:  # the ensemble won: it becomes the probe stage's model
        model_cfg = ModelConfig(growth.kept.backbone, run.classes, run.prep, dropout=cfg.dropout)
        model = build_classifier(model_cfg).to(run.device, memory_format=torch.channels_last)
        with torch.no_grad():
            model.head.weight.copy_(growth.kept.weight)
            model.head.bias.copy_(growth.kept.bias)
        probe = replace(probe, state=state_copy(model), valid_logits=growth.kept.valid_logits)
        caches = feature_caches(cfg.data.cache_dir, growth.kept.backbone, run.prep)

    stage, valid_logits = _keep_better(run, model, probe, ft_state, valid_pixels, said=growth is not None)
    test_logits = None
    if stage == "probe" and run.splits["test"]:
        # The probe is a head on cached features: the test images' features are computed once (ONNX
        # Runtime) and a later run on the same data reads them back instead of running the network.
        f_test = backbone_features(ui, model.backbone, run.splits["test"], run.prep, caches,
                                   pixel_cache=run.pixel_cache, split="test")
        test_logits = probe_logits(f_test, model.head.weight.detach().cpu(), model.head.bias.detach().cpu())
    familiarity = _familiarity(run, stage, model, model_cfg, probe, ft_state, caches, valid_pixels)
    planned_by = resumed.planned_by_budget if resumed is not None and resumed.planned_by_known else cfg.time_budget
    pinned, pin_caveat = budget_decisions(cfg if planned_by == cfg.time_budget else replace(cfg, time_budget=planned_by),
                                          ft_state, growth, resumed_with=cfg.time_budget if resumed else None)
    result = TrainResult(model.eval(), model_cfg, stage, probe.accuracy, ft_state, valid_logits,
                         time.perf_counter() - t_start, run.notes, str(run.device),
                         amp=uses_amp(run.device) and bool(ft_state and ft_state.history), mirror=check,
                         test_logits=test_logits, pinned=pinned, pin_caveat=pin_caveat, familiarity=familiarity,
                         planned_by_budget=planned_by)
    if pixel_limit is not None:  # last: every entry this run wrote or read is spared
        _say_trimmed(ui, trim_pixels(cfg.data.cache_dir, pixel_limit, used_since), pixel_limit)
    return result


def nothing_to_resume(out: Path) -> str:
    """Why ``out`` holds nothing ``--resume`` can continue, and what to run instead."""
    if (out / CHECKPOINT_DIR).is_dir():
        # Settings and split are written first; the plan only once fine-tuning is about to start.
        return (f"{out}: nothing to resume: the run there stopped before fine-tuning began (no "
                f"{CHECKPOINT_DIR}/state.json yet); train again without --resume, e.g. "
                f"`vistrain train --config {out / CHECKPOINT_DIR / 'train_config.yaml'} --out {out}`")
    return f"{out}: nothing to resume (no {CHECKPOINT_DIR}/state.json: no interrupted run there)"


def _restore_split(index: DatasetIndex, run_dir: Path) -> None:
    saved = read_split(in_progress_file(run_dir, "split.csv"))
    for r in index.records:
        if r.path in saved:
            r.split = saved[r.path]


def _start(index: DatasetIndex, cfg: TrainConfig, ui: Reporter, resumed: Resumable | None, t_start: float,
           sessions: Sessions) -> RunState:
    """Input size, labels, class balance and device for this run, printed."""
    size = resumed.image_size if resumed else (cfg.image_size or choose_image_size(index, cfg.backbone))
    prep: Preprocessing = get_backbone(cfg.backbone).preprocessing(size, cfg.resize)
    classes = index.classes
    splits = {name: index.split(name) for name in ("train", "valid", "test")}
    y_train = np.array([classes.index(r.label) for r in splits["train"]])
    y_valid = np.array([classes.index(r.label) for r in splits["valid"]])
    members = ensemble_members(cfg.backbone)
    ratio = imbalance_ratio(y_train, len(classes))
    balance = resolve_balance(cfg.balance, ratio)
    select_by = "macro_f1" if ratio >= IMBALANCED_RATIO else "accuracy"
    if ratio >= IMBALANCED_RATIO or balance != "none":
        ui.log(f"Classes imbalanced {ratio:.1f}:1 (largest/smallest); correction: {balance}"
               f" (--balance {cfg.balance}); best model chosen by {select_by.replace('_', ' ')}")
    ui.log(f"Backbone {cfg.backbone}, input {size} px ({cfg.resize}), "
           f"{len(splits['train'])} train / {len(splits['valid'])} valid images")
    device = resolve_device(cfg.device)
    if device.type != "cpu":
        ui.log(f"Device {describe(device)}" + (", mixed precision (float16) for fine-tuning" if uses_amp(device) else ""))
    return RunState(cfg, ui, t_start, resumed, prep, classes, splits, y_train, y_valid, members,
                    want_finetune=cfg.mode in ("auto", "finetune") and len(members) == 1, ratio=ratio,
                    balance=balance, select_by=select_by, device=device,
                    pixel_cache=PixelCache(cfg.data.cache_dir, prep) if cfg.data.cache_dir else None,
                    sessions=sessions)


def _decode(run: RunState) -> tuple[np.ndarray | None, list | None, np.ndarray | None]:
    """(training images' eval views, training canvases, validation pixels) when fine-tuning will read
    every image; Nones otherwise: the probe alone may need no image decoded (cached features)."""
    if not run.want_finetune:
        return None, None, None
    cache, prep = run.pixel_cache, run.prep
    with run.ui.stage("decode", len(run.train) + len(run.valid)) as advance:
        # With the disk cache, canvases stay on disk and the training set's eval views are
        # read back only if features must be computed; without it, one pass makes both.
        train_pixels, canvases = decode_all([r.path for r in run.train], prep, canvases=True, progress=advance,
                                            cache=cache, keys=[r.sha1 for r in run.train], pixels=cache is None)
        valid_pixels, _ = decode_all([r.path for r in run.valid], prep, progress=advance,
                                     cache=cache, keys=[r.sha1 for r in run.valid])
    if cache is not None:
        run.ui.log(f"  pixel cache: {cache.disk_bytes() / 1e6:.0f} MB in {cache.folder}")
    return train_pixels, canvases, valid_pixels


def _finetune_config(run: RunState) -> FinetuneConfig:
    cfg = run.cfg
    ft_cfg = FinetuneConfig(
        epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, label_smoothing=cfg.label_smoothing,
        patience=cfg.patience, augment=cfg.augment, seed=cfg.seed, weight_decay=cfg.weight_decay,
        schedule=cfg.schedule, balance=run.balance, select_by=run.select_by,
        micro_batch=training_micro_batch(cfg.batch_size, train_preprocessing(run.prep).size,
                                         activation_budget(cfg, run.device)),
    )
    if micro_batch_size(ft_cfg) < ft_cfg.batch_size:
        why = (f"batches of {ft_cfg.batch_size} ran as passes of up to {ft_cfg.micro_batch} images, for memory "
               f"(gradients summed: the same training, ~20% slower)")
        run.ui.log("  " + why)
        run.notes.append(why)
    return ft_cfg


def _finetune_stage(run: RunState, model: ImageClassifier, probe: ProbeState, canvases, valid_pixels: np.ndarray,
                    caches: list[FeatureCache], on_epoch: Callable[[int, float], None] | None
                    ) -> tuple[FinetuneState, Growth | None, MirrorCheck | None]:
    """The epochs that fit the budget (or the rest of a resumed run's), trained into ``model``; when
    too few fit, probes of partner backbones instead. Returns the fine-tuning state, the partner
    probes (None when none were fitted) and the mirror check (None unless flips were "auto")."""
    cfg, ui, resumed = run.cfg, run.ui, run.resumed
    ft_cfg = _finetune_config(run)
    growth, check = None, None
    if resumed is not None:
        if ft_cfg.augment.flip == "auto":  # on the probe, before the fine-tuned weights replace it
            check, ft_cfg = _decide_flips(run, model, valid_pixels, caches[0], None, ft_cfg)
        ft_state, epoch_s = resumed.state, resumed.epoch_seconds
        done, planned = len(ft_state.history), ft_state.planned_epochs
        if resumed.model_state is not None:
            model.load_state_dict(resumed.model_state)
            ui.log(f"Resuming fine-tuning after epoch {done} of {planned}")
        else:  # stopped during its first epoch: the model is still the probe, as fine-tuning starts
            ui.log(f"Resuming fine-tuning from its start (stopped during epoch 1 of {planned})")
        if cfg.time_budget is not None and done < planned:
            ft_cfg = _resumed_budget(run, model, ft_cfg, ft_state, canvases, valid_pixels,
                                     ft_state.history[-1].seconds if done else epoch_s)
    else:
        release_freed_memory()  # what decoding and the features' ONNX session used, before training
        ft_state, epoch_s = plan_finetuning(ui, model, canvases, run.y_train, valid_pixels, run.prep, ft_cfg, cfg,
                                            run.t_start, run.notes)
        if is_main():
            save_probe_head(cfg.out, model.head)
        if (ft_state.planned_epochs < MIN_FINETUNE_EPOCHS and cfg.mode == "auto" and cfg.ensemble == "auto"
                and cfg.time_budget is not None and world_size() == 1):
            # Under torchrun each rank would time, and might choose, differently: one process only.
            ft_state, growth = grow_instead(run, model, probe, ft_state, epoch_s, valid_pixels)
        if ft_state.planned_epochs > 0 and ft_cfg.augment.flip == "auto":
            # Only now that epochs will run: the check costs a pass over the mirrored validation
            # images (clothing: 18 s), time that otherwise goes to partner probes. The model is
            # still the probe: planning measured steps without taking one.
            check, ft_cfg = _decide_flips(run, model, valid_pixels, caches[0], probe.valid_logits, ft_cfg)
    if ft_state.planned_epochs > len(ft_state.history) and not ft_state.out_of_time:
        extra = {"image_size": run.prep.size, "probe_accuracy": probe.accuracy, "probe_loss": probe.loss,
                 "probe_score": probe.score, "epoch_seconds": epoch_s,
                 "planned_by_budget": (resumed.planned_by_budget if resumed is not None and resumed.planned_by_known
                                       else cfg.time_budget)}
        if resumed is None and is_main():
            save_plan(cfg.out, ft_state, {**extra, **run.sessions.record()})
        with ui.stage("fine-tune", (ft_state.planned_epochs - len(ft_state.history)) * len(canvases)) as advance:
            ft_state = finetune(
                model, canvases, run.y_train, valid_pixels, run.y_valid, run.prep, ft_cfg, ft_state,
                optimizer_state=resumed.optimizer_state if resumed else None,
                on_epoch=_epoch_logger(ui, model, cfg.out, extra, run.sessions, on_epoch), progress=advance,
            )
    if ft_state.stop_reason:
        run.notes.append(ft_state.stop_reason)
    return ft_state, growth, check


def _resumed_budget(run: RunState, model: ImageClassifier, ft_cfg: FinetuneConfig, ft_state: FinetuneState,
                    canvases, valid_pixels: np.ndarray, epoch_s: float | None) -> FinetuneConfig:
    """``ft_cfg`` with the time budget given now, counted from the resume: the planned epochs are
    kept (they shape the schedule), the budget stops them early. When not even the next epoch fits
    (``epoch_s``: the last one's seconds), none runs: ``ft_state`` says so."""
    cfg, done, planned = run.cfg, len(ft_state.history), ft_state.planned_epochs
    left = resumed_time_limit(model, len(canvases), valid_pixels, run.prep, cfg, run.t_start)
    run.ui.log(f"  time budget: {cfg.time_budget:g} s from the resume, about {max(left, 0):.0f} s of it for "
               f"epochs {done + 1}-{planned}")
    run.notes.append(f"resumed after epoch {done} of {planned} with a {cfg.time_budget:g} s time budget, "
                     f"counted from the resume")
    # --mode finetune asked for a fine-tuned network: with none trained yet, one epoch runs regardless.
    if epoch_s is not None and left < epoch_s and (done or cfg.mode != "finetune"):
        ft_state.out_of_time = True
        ft_state.stop_reason = (f"time budget reached: the {cfg.time_budget:g} s time budget given with --resume "
                                f"leaves no room for epoch {done + 1} of {planned} (~{epoch_s:.0f} s)"
                                + (f"; kept the best of the {done} epoch(s) trained" if done else ""))
    return replace(ft_cfg, time_budget=left)


def _keep_better(run: RunState, model: ImageClassifier, probe: ProbeState, ft_state: FinetuneState | None,
                 valid_pixels: np.ndarray | None, said: bool = False) -> tuple[str, np.ndarray]:
    """Loads the kept stage's weights into ``model``: the best fine-tuned epoch when it beats the
    probe (or ``--mode finetune``), else the probe. Returns the stage and its validation logits."""
    ft_acc = ft_state.best_accuracy if ft_state and ft_state.best_state is not None else None
    ft_better = ft_acc is not None and finetuning_won(probe, ft_state)
    if ft_acc is not None and (run.cfg.mode == "finetune" or ft_better):
        model.load_state_dict(ft_state.best_state)
        logits = ft_state.best_logits
        return "finetune", logits if logits is not None else evaluate_logits(model, valid_pixels, run.prep)
    if ft_acc is not None and not said:  # said: grow_after's note gave both figures
        run.notes.append(f"kept the linear probe: fine-tuning reached {ft_acc:.1%} on validation "
                         f"(loss {ft_state.best_loss:.3f}), the probe {probe.accuracy:.1%} (loss {probe.loss:.3f})")
    model.load_state_dict(probe.state)
    logits = probe.valid_logits
    return "probe", logits if logits is not None else evaluate_logits(model, valid_pixels, run.prep)


def _familiarity(run: RunState, stage: str, model: ImageClassifier, model_cfg: ModelConfig, probe: ProbeState,
                 ft_state: FinetuneState | None, caches: list[FeatureCache], valid_pixels: np.ndarray | None
                 ) -> Familiarity | None:
    """Which photos are unlike the training ones, from the kept model's features; None (with a note
    saying why) when switched off or interrupted."""
    if not run.cfg.familiarity:
        run.notes.append("no familiarity check (familiarity: false): predict cannot say which photos are unlike "
                         "the training ones")
        return None
    if stage == "finetune" and ft_state.interrupted:  # Ctrl-C asked to stop now, not after one more pass
        run.notes.append("no familiarity check (training was interrupted): --resume finishes the run with it")
        return None
    # The probe's own features, already computed, when the kept model is the probe of this backbone.
    known = ((probe.features["train"], probe.features["valid"])
             if stage == "probe" and probe.features is not None and model_cfg.backbone == run.cfg.backbone else None)
    return fit_familiarity(run.ui, stage, model, model_cfg.backbone, run.train, run.y_train, run.valid, run.prep,
                           caches, run.pixel_cache, valid_pixels, run.cfg.seed, known)


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


def _decide_flips(run: RunState, model: ImageClassifier, valid_pixels: np.ndarray, cache: FeatureCache,
                  logits: np.ndarray | None, ft_cfg: FinetuneConfig) -> tuple[MirrorCheck, FinetuneConfig]:
    """The mirror check, printed, and ``ft_cfg`` flipping its crops or not accordingly: the probe
    (``model.head``) on the validation images (``logits``, or from the cached features when resuming)
    and on their mirror images (features cached too: a second run pays nothing)."""
    ui, w, b = run.ui, model.head.weight.detach().cpu(), model.head.bias.detach().cpu()
    if logits is None:
        logits = probe_logits(cached_features(ui, model.backbone, run.valid, run.prep, cache, valid_pixels), w, b)
    flipped = [replace(r, sha1=f"{r.sha1}-mirrored") for r in run.valid]
    f_mirrored = cached_features(ui, model.backbone, flipped, run.prep, cache, mirrored(valid_pixels))
    check = mirror_check(run.y_valid, logits.argmax(1), probe_logits(f_mirrored, w, b).argmax(1))
    ui.log("  " + check.describe())
    if not check.keep_flips:
        run.notes.append(check.describe())
    return check, replace(ft_cfg, augment=replace(ft_cfg.augment, flip=check.keep_flips))


def _epoch_logger(ui: Reporter, model, out: Path, extra: dict, sessions: Sessions,
                  then: Callable[[int, float], None] | None = None):
    def on_epoch(st: FinetuneState, opt) -> None:
        if is_main():  # first: an interruption while printing loses nothing
            save_checkpoint(out, model, opt, st, {**extra, **sessions.record()})
        h = st.history[-1]
        ui.log(f"  epoch {h.epoch}/{st.planned_epochs}: train loss {h.train_loss:.3f}, "
               f"valid loss {h.valid_loss:.3f}, valid accuracy {h.valid_accuracy:.1%} "
               f"({h.seconds:.0f} s, {h.data_wait / max(h.seconds, 1e-9):.0%} waiting for data)")
        if then is not None:
            then(h.epoch, st.best_score)  # the best so far: pruning compares trials at equal epochs

    return on_epoch

"""``vistrain train``."""

from __future__ import annotations

import shlex
import time
from pathlib import Path

from rich.markup import escape

from vistrain.commands import add_data_flags, add_device_flag, cache_dir
from vistrain.commands.lr_find import learning_rate
from vistrain.config_file import resolve_train_args, track_explicit_flags

NAME = "train"
ORDER = 10


def register(sub) -> None:
    t = sub.add_parser(NAME, help="train a classifier on a folder of photos")
    t.add_argument("data", type=Path, nargs="?",
                   help="class folders, train/valid(/test) folders, or a CSV of path,label (or `data:` in --config)")
    t.add_argument("--config", type=Path, metavar="FILE.yaml",
                   help="settings from a YAML file (any option below, by its long name with _); flags typed here win")
    t.add_argument("--out", type=Path, default=Path("runs/latest"), help="run folder to write (default runs/latest)")
    t.add_argument("--backbone", default="efficientnet_lite0",
                   help="efficientnet_lite0 (default), efficientnet_lite1, efficientnet_lite2, mobilenet_v2; "
                        "or an ensemble of linear probes, e.g. efficientnet_lite0+efficientnet_lite1+efficientnet_lite2")
    t.add_argument("--mode", default="auto", choices=["auto", "probe", "finetune"],
                   help="probe: frozen features + linear head; finetune: whole network; auto: both, keep the better")
    t.add_argument("--ensemble", default="auto", choices=["auto", "off"],
                   help="auto: when fewer than 3 fine-tuning epochs fit the time budget, or fine-tuning does not "
                        "beat the probe, spend the rest on linear "
                        "probes of backbones with the same preprocessing and keep their ensemble if it wins on "
                        "validation (predicting then runs one network per member); off: one backbone (default auto)")
    t.add_argument("--epochs", type=int, default=8, help="most fine-tuning epochs (default 8)")
    t.add_argument("--time-budget", type=float, default=600.0, metavar="SECONDS",
                   help="wall-clock budget for the whole run; fine-tuning epochs are planned to fit (default 600)")
    t.add_argument("--no-time-budget", action="store_true", help="no time limit: train --epochs epochs")
    t.add_argument("--patience", type=int, default=3, metavar="EPOCHS",
                   help="stop fine-tuning when validation loss has not fallen for this many epochs, in the "
                        "second half of the schedule (default 3; may change with --resume)")
    t.add_argument("--image-size", type=int, default=None, help="input size in pixels (default: from the photos' sizes)")
    t.add_argument("--resize", default="crop", choices=["crop", "pad", "squish"],
                   help="how non-square photos become square (default crop)")
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--max-memory", type=float, default=None, metavar="GB",
                   help="keep fine-tuning under about this much memory by running each batch in smaller "
                        "passes (same training, slower; default: half of the free memory). On a GPU, passes are "
                        "sized to half of the GPU's free memory instead")
    t.add_argument("--lr", type=learning_rate, default=1e-4,
                   help="head learning rate for fine-tuning (default 1e-4); auto: run lr-find first")
    t.add_argument("--label-smoothing", type=float, default=0.0, help="label smoothing while fine-tuning (default 0)")
    t.add_argument("--valid-fraction", type=float, default=0.2, help="share held out when vistrain splits (0.2)")
    t.add_argument("--seed", type=int, default=0, help="fixes the split and the training (default 0)")
    t.add_argument("--resume", action="store_true",
                   help="continue an interrupted run in --out, with its settings and split (a --time-budget "
                        "given now counts from the resume)")
    t.add_argument("--balance", default="auto", choices=["auto", "sampler", "loss", "none"],
                   help="class-imbalance correction; auto picks one from the measured imbalance (default auto)")
    t.add_argument("--schedule", default="onecycle", choices=["onecycle", "cosine-restarts", "exp-decay", "constant"],
                   help="fine-tuning learning-rate schedule (default onecycle)")
    add_device_flag(t, "to train (on CUDA: mixed precision)")
    t.add_argument("--mlflow", nargs="?", const="mlruns", metavar="URI",
                   help="also log the run to MLflow: a folder (default ./mlruns, SQLite inside) or a tracking URI")
    add_data_flags(t)
    track_explicit_flags(t)  # last: flags typed on the command line override --config


INTERRUPTED = 130  # the shell's code for a process stopped by Ctrl-C (128 + SIGINT), as cli.main returns
SUMMARY_CLASSES = 20  # per-class rows in the summary; more classes show their weakest 20


def _command(console, command: str) -> None:
    """A command to copy: on a line of its own, never wrapped (a wrapped path would not paste)."""
    console.print(f"  {command}", markup=False, highlight=False, soft_wrap=True)


def written(folder: Path, since: float) -> list[str]:
    """The files this run wrote in ``folder`` (modified since ``since``, a time.time()), the model
    first: the folder may also hold an earlier run's report.html or export/, which are not this run's.
    A second of slack covers file systems that keep coarse modification times."""
    names = [p.name for p in folder.iterdir()
             if p.is_file() and not p.name.startswith(".") and p.stat().st_mtime >= since - 1]
    return sorted(names, key=lambda name: (name != "model.safetensors", name))


def run(args, console, reporter) -> int:
    from vistrain.api import OPTIMISTIC, train
    from vistrain.evaluation.confidence import describe, low_coverage_note
    from vistrain.evaluation.render import (
        ci_text,
        confusion_table,
        per_class_table,
        top_confusions,
        worst_classes,
    )
    from vistrain.models.registry import ensemble_members

    args, extra = resolve_train_args(args)
    if args.mlflow:
        from vistrain.tracking import require_mlflow

        require_mlflow()
    started = time.time()
    resume_hint = f"vistrain train {shlex.quote(str(args.data))} --out {shlex.quote(str(args.out))} --resume"
    try:
        trained = train(
            args.data, out=args.out, reporter=reporter, label_from_name=args.label_from_name,
            valid_fraction=args.valid_fraction, cache_dir=cache_dir(args),
            backbone=args.backbone, mode=args.mode, epochs=args.epochs,
            time_budget=None if args.no_time_budget else args.time_budget, image_size=args.image_size,
            resize=args.resize, batch_size=args.batch_size, lr=args.lr, label_smoothing=args.label_smoothing,
            seed=args.seed, resume=args.resume, balance=args.balance, schedule=args.schedule, device=args.device,
            max_memory=args.max_memory, ensemble=args.ensemble, patience=args.patience,
            **extra,
        )
    except KeyboardInterrupt:
        # Outside fine-tuning's epochs (which stop cleanly and save a model): before them, or in the
        # familiarity pass after them. No model is written then; say whether --resume can finish it.
        from vistrain.training.checkpoint import CHECKPOINT_DIR

        if (args.out / CHECKPOINT_DIR / "state.json").exists():
            console.print(f"[yellow]Interrupted[/]: no model written to {escape(str(args.out))}/; its fine-tuning "
                          "is checkpointed, and this finishes the run:", highlight=False)
            _command(console, resume_hint)
        else:
            console.print("[yellow]Interrupted[/] before any model or fine-tuning checkpoint was saved: nothing to "
                          "resume; train again:", highlight=False)
            _command(console, resume_hint.removesuffix(" --resume"))
        return INTERRUPTED
    from vistrain.training.distributed import is_main

    if not is_main():  # under torchrun the summary is rank 0's to print, once
        return 0
    m, res = trained.metrics, trained.result
    console.print()
    full_at = f"{trained.path}/metrics.json"
    console.print(per_class_table(m["valid"], "Validation, per class", limit=SUMMARY_CLASSES, full_at=full_at))
    console.print(confusion_table(m["valid"], width=console.width, full_at=full_at))
    members = ensemble_members(res.model_config.backbone)
    kept = ("fine-tuned network" if res.stage == "finetune" else "linear probe on frozen features" if len(members) == 1
            else f"ensemble of linear probes ({', '.join(members)})")
    ft = res.finetune
    interrupted = bool(ft and ft.interrupted)
    # A resumed run's earlier sessions too (metrics.json has them unless its checkpoint was older)
    in_all = (f" ({m['total_seconds']:.0f} s in all, over {len(m['session_seconds'])} sessions)"
              if m.get("total_seconds") is not None else "")
    if interrupted:
        console.print(f"\n[bold yellow]Interrupted[/] (Ctrl-C) after {trained.seconds:.0f} s{in_all} on {res.device}, "
                      f"with {len(ft.history)} of {ft.planned_epochs} fine-tuning epochs done. Saved for now: the best "
                      f"model so far ({kept}).")
    else:
        console.print(f"\n[bold green]Done[/] in {trained.seconds:.0f} s{in_all} on {res.device}"
                      + (" (mixed precision)" if res.amp else "") + f". Kept: {kept}.")
    console.print(f"  validation accuracy {m['valid']['accuracy']:.1%} ({m['valid']['errors']} of {m['valid']['n']} wrong"
                  f"{ci_text(m['valid'])}); linear probe alone {res.probe_accuracy:.1%}")
    if m["valid"].get("note", "").endswith(OPTIMISTIC):
        console.print(f"  [dim]{escape(m['valid']['note'])}"
                      + ("; the test images were used for nothing[/]" if "test" in m else
                         "; a test/ folder (or `vistrain evaluate` on new photos) gives an unbiased figure[/]"))
    if "test" in m:
        console.print(f"  test accuracy {m['test']['accuracy']:.1%} ({m['test']['n'] - m['test']['errors']} of "
                      f"{m['test']['n']} right{ci_text(m['test'])})")
    console.print(f"  confidence: {describe(trained.predictor.config)}")
    strict = low_coverage_note(trained.predictor.config, shlex.quote(str(trained.path)))
    if strict:
        console.print(f"  note: {strict}", markup=False)
    if res.familiarity is not None:
        console.print(f"  familiarity: {res.familiarity.describe()}", markup=False)
    for note in res.notes:
        console.print(f"  note: {note}", markup=False)
    weak = worst_classes(m["valid"])
    if weak:
        console.print(f"  weakest classes: {', '.join(weak)}", markup=False)
    for a, b, n in top_confusions(m["valid"]):
        console.print(f"  {n} × actual {a} predicted as {b}", markup=False)
    console.print(f"  run saved in {trained.path}/ ({', '.join(written(trained.path, started))})", markup=False)
    if not interrupted:
        console.print(f"  repeat it on any machine: vistrain train --config {trained.path}/train_config.yaml --out NEW_RUN", markup=False)
    console.print(f"  next: vistrain predict {trained.path} NEW_PHOTOS/ --csv predictions.csv", markup=False)
    if args.mlflow:
        from vistrain.tracking import log_run

        console.print(f"  MLflow: run {log_run(trained.path, args.mlflow)} logged to {args.mlflow}", markup=False)
    if interrupted:
        console.print("[yellow]Interrupted[/]: to finish the run (the rest of its epochs, then the familiarity "
                      "check):", highlight=False)
        _command(console, resume_hint)
        return INTERRUPTED
    return 0



"""``vistrain sweep``."""

from __future__ import annotations

from pathlib import Path

from vistrain.commands import add_data_flags, cache_dir

NAME = "sweep"
ORDER = 15


def register(sub) -> None:
    s = sub.add_parser(NAME, help="search training settings with Optuna (one or many workers)")
    s.add_argument("data", type=Path, help="the dataset, as for train")
    s.add_argument("--space", type=Path, required=True, metavar="SPACE.yaml",
                   help="settings to search: `lr: {low: 1e-4, high: 3e-3, log: true}`, `resize: [crop, pad]`, `mode: probe`")
    s.add_argument("--trials", type=int, default=12, help="trials in the study, all workers together (default 12)")
    s.add_argument("--storage", metavar="URL",
                   help="study database (default: sqlite file in --out); postgresql://user@host:port/db to share it")
    s.add_argument("--study", help="study name; workers sharing a storage and name share trials (default: the space file's name)")
    s.add_argument("--sampler", default="tpe", choices=["tpe", "random", "grid"], help="how trials are chosen (default tpe)")
    s.add_argument("--pruner", default="median", choices=["median", "halving", "none"],
                   help="stop poor fine-tuning trials after an epoch (default median)")
    s.add_argument("--metric", default="accuracy", choices=["accuracy", "macro_f1"], help="validation score to maximise")
    s.add_argument("--config", type=Path, metavar="FILE.yaml", help="settings shared by every trial (a train --config file)")
    s.add_argument("--out", type=Path, help="sweep folder (default sweeps/STUDY)")
    s.add_argument("--seed", type=int, default=0, help="the sampler's seed (default 0)")
    s.add_argument("--device", metavar="auto|cpu|cuda",
                   help="where every trial trains (default: the --config file's, else auto)")
    add_data_flags(s)


def run(args, console, reporter) -> int:
    from rich.table import Table
    from rich.text import Text

    from vistrain.config_file import load_config
    from vistrain.sweep.report import best_line, trial_rows, write_outputs
    from vistrain.sweep.runner import (
        SweepConfig,
        SweepInterrupted,
        counted_trials,
        run_sweep,
    )
    from vistrain.sweep.space import load_space

    space = load_space(args.space)
    base = load_config(args.config) if args.config else {}
    if args.device is not None:
        base["device"] = args.device
    if "device" in base:
        from vistrain.training.device import resolve_device

        resolve_device(base["device"])  # refused before the first trial, not by every trial in turn
    study = args.study or args.space.stem
    cfg = SweepConfig(
        data=args.data, space=space, trials=args.trials, out=args.out or Path("sweeps") / study,
        storage=args.storage, sampler=args.sampler, pruner=args.pruner, study=study, metric=args.metric,
        seed=args.seed, base=base, label_from_name=args.label_from_name or base.get("label_from_name"),
        cache_dir=cache_dir(args) if (args.cache_dir or args.no_cache) else base.get("cache_dir"),
        space_file=args.space,
    )
    try:
        st, stopped = run_sweep(cfg, reporter), False
    except SweepInterrupted as exc:  # the finished trials still make a summary: written below, like a full sweep's
        st, stopped = exc.study, True
    files = write_outputs(st, cfg)
    rows = trial_rows(st, cfg)
    table = Table(title=Text(f"Sweep {study}: {len(rows)} trial(s)"))
    hidden = ("worker", "error", "valid_accuracy", "valid_macro_f1", "stage")  # in trials.csv; "value" is the score
    cols = [c for c in rows[0] if c not in hidden and any(r[c] is not None for r in rows)] if rows else []
    for c in cols:
        table.add_column(c, justify="right")
    for r in sorted(rows, key=lambda r: -(r["value"] if r["value"] is not None else -1))[:20]:
        table.add_row(*[f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c] if r[c] is not None else "") for c in cols])
    console.print(table)
    states = [r["state"] for r in rows]
    console.print(f"{states.count('complete')} complete, {states.count('pruned')} pruned, {states.count('fail')} failed"
                  + (f", {states.count('interrupted')} interrupted" if "interrupted" in states else ""))
    for r in rows:
        if r["error"] and r["state"] == "fail":
            console.print(f"  trial {r['trial']} failed: {r['error']}", markup=False)
    if "best" in files:
        b = st.best_trial
        console.print(f"[bold green]Best[/]: {best_line(st, args.metric)}"
                      + (f", test accuracy {b.user_attrs['test_accuracy']:.1%}" if "test_accuracy" in b.user_attrs else ""))
        console.print(f"  settings: {files['best']}  (vistrain train --config {files['best']} --out runs/best)", markup=False)
    console.print(f"  trials table: {files['trials']}; plots: {files['html']}", markup=False)
    if stopped:
        done = len([t for t in counted_trials(st) if t.state.name != "RUNNING"])
        console.print(f"[yellow]interrupted[/] after {done} of {args.trials} trial(s); run the same command to "
                      f"continue (the trial cut short is not counted)")
        return 130
    return 0

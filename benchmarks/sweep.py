"""A timed sweep on a real dataset: does its best trial beat the defaults, and does the gain hold on test?

    python benchmarks/sweep.py [DATASET] [--trials 12] [--space benchmarks/sweep_space.yaml]
                               [--defaults-run RUN]

Runs `vistrain sweep` with a cold cache (scanning and decoding included, as a first sweep would),
then compares its best trial with vistrain's defaults: a default run given by --defaults-run (for
example one made by benchmarks/climbing.py), else a default probe-only run trained here (cheap:
the caches are warm). Target (issue #7): 12 trials on climbing within 20 minutes on 2 CPU cores.
Validation sets this small overfit sweeps: the test line says whether the lead is real.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import vistrain
from vistrain.progress import RichReporter
from vistrain.sweep.report import write_outputs
from vistrain.sweep.runner import SweepConfig, run_sweep
from vistrain.sweep.space import load_space

HERE = Path(__file__).resolve().parent


def summary(metrics: dict) -> dict:
    out = {"valid_accuracy": round(metrics["valid"]["accuracy"], 4),
           "valid_wrong": f"{metrics['valid']['errors']}/{metrics['valid']['n']}"}
    if "test" in metrics:
        t = metrics["test"]
        out["test_right"] = f"{t['n'] - t['errors']}/{t['n']}"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", nargs="?", type=Path, default=HERE.parent.parent / "shared" / "datasets" / "climbing")
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--space", type=Path, default=HERE / "sweep_space.yaml")
    ap.add_argument("--defaults-run", type=Path, help="a finished default run to compare with (its metrics.json)")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="vistrain-bench-sweep-"))
    cache = work / "cache"
    cfg = SweepConfig(data=args.data, space=load_space(args.space), trials=args.trials, out=work / "sweep",
                      study="bench", cache_dir=cache)
    t0 = time.perf_counter()
    study = run_sweep(cfg, RichReporter())
    sweep_seconds = time.perf_counter() - t0
    files = write_outputs(study, cfg)
    best = study.best_trial
    best_metrics = json.loads((Path(best.user_attrs["run_dir"]) / "metrics.json").read_text())

    if args.defaults_run:
        default_metrics = json.loads((args.defaults_run / "metrics.json").read_text())
        default_label = f"defaults ({args.defaults_run})"
    else:
        run = vistrain.train(args.data, out=work / "default-probe", cache_dir=cache, mode="probe")
        default_metrics, default_label = run.metrics, "defaults, --mode probe"

    b, d = summary(best_metrics), summary(default_metrics)
    print(json.dumps({
        "dataset": str(args.data),
        "trials": len(study.trials),
        "sweep_seconds": round(sweep_seconds, 1),
        "within_20_minutes": sweep_seconds <= 1200,
        "best_trial": best.number,
        "best_settings": best.params,
        "best": b,
        default_label: d,
        "best_beats_defaults_on_valid": b["valid_accuracy"] > d["valid_accuracy"],
        "trial_seconds": [t.user_attrs.get("seconds") for t in study.trials],
        "files": {k: str(v) for k, v in files.items()},
    }, indent=2))


if __name__ == "__main__":
    main()

"""Train vistrain with default settings on a real dataset; print validation error, test score and wall time.

    python benchmarks/climbing.py [DATASET] [--out DIR] [--cache-dir DIR] [--set KEY=VALUE ...]

DATASET defaults to ../shared/datasets/climbing (train/valid/test, test flat with labels in names).
Targets on a 2-core CPU (issue #2): validation error <= 7%, >= 11 of 12 test images, <= 10 minutes.
Also used for clothing: python benchmarks/climbing.py ../shared/datasets/clothing
"""

from __future__ import annotations

import argparse
import ast
import json
import shutil
import tempfile
import time
from pathlib import Path

import vistrain
from vistrain.memory import peak_rss_gb
from vistrain.progress import RichReporter

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", nargs="?", type=Path, default=HERE.parent.parent / "shared" / "datasets" / "climbing")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--cache-dir", type=Path, default=None,
                    help="cache to use and keep (a second run with the same DIR is a warm run); default: a fresh one, removed")
    ap.add_argument("--set", dest="options", action="append", default=[], metavar="KEY=VALUE",
                    help="a train option, e.g. --set mode=probe --set time_budget=300 (repeatable)")
    args = ap.parse_args()
    options = {}
    for item in args.options:
        key, _, value = item.partition("=")
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key] = value
    out = args.out or Path(tempfile.mkdtemp(prefix="vistrain-bench-")) / args.data.name
    # A fresh cache: the figure includes scanning, as a first run would. --cache-dir DIR measures a
    # warm run instead (or keeps the cache for one); the fresh one is removed (clothing: ~3.8 GB).
    cache = args.cache_dir or Path(tempfile.mkdtemp(prefix="vistrain-bench-cache-"))
    t0 = time.perf_counter()
    try:
        run = vistrain.train(args.data, out=out, reporter=RichReporter(), cache_dir=cache, **options)
    finally:
        if args.cache_dir is None:
            shutil.rmtree(cache, ignore_errors=True)
    wall = time.perf_counter() - t0
    peak = peak_rss_gb()
    m = run.metrics
    summary = {
        "dataset": str(args.data),
        "options": options,
        "stage_kept": run.result.stage,
        "image_size": run.predictor.config.preprocessing.size,
        "probe_valid_accuracy": round(run.result.probe_accuracy, 4),
        "valid_error": round(1 - m["valid"]["accuracy"], 4),
        "valid_wrong": f"{m['valid']['errors']}/{m['valid']['n']}",
        "test_accuracy": round(m["test"]["accuracy"], 4) if "test" in m else None,
        "test_right": f"{m['test']['n'] - m['test']['errors']}/{m['test']['n']}" if "test" in m else None,
        "epochs": [(h.epoch, round(h.valid_accuracy, 4), round(h.seconds)) for h in (run.result.finetune.history if run.result.finetune else [])],
        "notes": run.result.notes,
        "wall_seconds": round(wall, 1),
        "peak_rss_gb": None if peak is None else round(peak, 2),
        "run": str(out),
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

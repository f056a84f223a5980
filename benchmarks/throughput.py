"""Images per second for each stage, side by side in one run, and peak memory of a training run.

    python benchmarks/throughput.py [DATASET] [--size 352] [--limit 200]

DATASET defaults to ../shared/datasets/climbing. Stages: scan (cold), decode to eval pixels +
training canvases, frozen features with PyTorch and with ONNX Runtime (ratio printed), one
fine-tuning epoch (forward + backward at the training crop size), and predict over a folder.
Also: the disk pixel cache (build, warm reads), the share of a fine-tuning epoch spent waiting
for data. Peak RSS of this process is read at the end (it holds every stage's arrays at once);
then the peak RSS of real `vistrain train --mode finetune --epochs 1` runs (Lite0, batch 32), each in
a fresh process on the whole dataset: with default settings and with `--max-memory 3`.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vistrain.data.dataset import DataConfig, build_index
from vistrain.data.pixel_cache import PixelCache
from vistrain.evaluation.predictor import Predictor
from vistrain.models.classifier import ModelConfig, build_classifier
from vistrain.models.registry import get_backbone
from vistrain.training.features import extract_features, onnx_session
from vistrain.training.finetune import FinetuneConfig, FinetuneState, finetune
from vistrain.training.pixels import decode_all

HERE = Path(__file__).resolve().parent


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


CHILD = """
import json, sys, time
from vistrain.cli import main
from vistrain.memory import peak_rss_gb
t = time.perf_counter()
code = main(sys.argv[1:])
print("PEAK " + json.dumps({"code": code, "seconds": time.perf_counter() - t, "peak_rss_gb": peak_rss_gb()}))
"""


def training_run_peak(data: Path, cache: Path, extra: list[str]) -> dict:
    """Peak RSS and wall seconds of one fine-tuning epoch of `vistrain train` in a fresh process."""
    out = Path(tempfile.mkdtemp(prefix="vistrain-throughput-run-"))
    argv = ["train", str(data), "--out", str(out), "--mode", "finetune", "--epochs", "1", "--no-time-budget",
            "--cache-dir", str(cache), *extra]
    done = subprocess.run([sys.executable, "-c", CHILD, *argv], capture_output=True, text=True, check=False)
    line = next((x for x in done.stdout.splitlines() if x.startswith("PEAK ")), None)
    if line is None:
        raise SystemExit(f"training run failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return json.loads(line[5:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", nargs="?", type=Path, default=HERE.parent.parent / "shared" / "datasets" / "climbing")
    ap.add_argument("--size", type=int, default=352)
    ap.add_argument("--limit", type=int, default=200, help="images used per stage (keeps the run short)")
    args = ap.parse_args()
    cache = Path(tempfile.mkdtemp(prefix="vistrain-throughput-"))
    rates = {}

    index, s = timed(lambda: build_index(DataConfig(args.data, cache_dir=cache)))
    n_scanned = len(index.records) + len(index.skipped)
    rates["scan_cold"] = n_scanned / s
    _, s = timed(lambda: build_index(DataConfig(args.data, cache_dir=cache)))
    rates["scan_cached"] = n_scanned / s

    records = index.split("train")[: args.limit]
    paths = [r.path for r in records]
    prep = get_backbone("efficientnet_lite0").preprocessing(args.size)
    (pixels, _canvases), s = timed(lambda: decode_all(paths, prep, canvases=True))
    rates["decode_pixels_and_canvases"] = len(paths) / s
    # The disk pixel cache: first build (decode + resize + write), then a warm read of the same views.
    pixel_cache = PixelCache(cache, prep)
    keys = [r.sha1 for r in records]
    _, s = timed(lambda: decode_all(paths, prep, canvases=True, cache=pixel_cache, keys=keys))
    rates["pixel_cache_build"] = len(paths) / s
    (_, disk_canvases), s = timed(lambda: decode_all(paths, prep, canvases=True, cache=pixel_cache, keys=keys))
    rates["pixel_cache_warm_eval_views"] = len(paths) / s
    _, s = timed(lambda: [disk_canvases[i] for i in range(len(disk_canvases))])
    rates["pixel_cache_canvas_reads"] = len(paths) / s
    rates["pixel_cache_mb_per_image"] = pixel_cache.disk_bytes() / 1e6 / len(paths)

    classes = index.classes
    model = build_classifier(ModelConfig("efficientnet_lite0", classes, prep)).to(memory_format=torch.channels_last)
    extract_features(model.backbone, pixels[:8], prep)  # warm-up
    f_torch, s_torch = timed(lambda: extract_features(model.backbone, pixels, prep))
    session, s_export = timed(lambda: onnx_session(model.backbone, "efficientnet_lite0", prep, cache))
    f_ort, s_ort = timed(lambda: extract_features(model.backbone, pixels, prep, session=session))
    rates["features_torch"] = len(paths) / s_torch
    rates["features_onnxruntime"] = len(paths) / s_ort
    rates["onnx_export_seconds"] = s_export
    rates["features_ort_speedup"] = s_torch / s_ort
    rates["features_max_abs_diff"] = float(np.abs(f_torch - f_ort).max())  # ORT vs PyTorch agreement

    labels = np.array([classes.index(r.label) for r in records])
    cfg = FinetuneConfig(epochs=1, time_budget=None)
    # Canvases read from the disk cache, batches prepared in the background: as `train` does.
    state, s = timed(lambda: finetune(model, disk_canvases, labels, pixels[:16], labels[:16], prep, cfg,
                                      FinetuneState(planned_epochs=1)))
    rates["finetune_epoch"] = len(paths) / s
    rates["finetune_data_wait_share"] = state.history[0].data_wait / state.history[0].seconds

    predictor = Predictor(model.eval(), ModelConfig("efficientnet_lite0", classes, prep))
    _, s = timed(lambda: predictor.predict_paths(paths))
    rates["predict_folder"] = len(paths) / s

    rates["peak_rss_gb_this_process"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    for name, extra in (("default", []), ("max_memory_3", ["--max-memory", "3"])):
        run = training_run_peak(args.data, cache, extra)
        rates[f"train_run_peak_rss_gb_{name}"] = run["peak_rss_gb"]
        rates[f"train_run_seconds_{name}"] = run["seconds"]
    print(json.dumps({"dataset": str(args.data), "size": args.size, "images": len(paths), "threads": torch.get_num_threads(),
                      "figures": {k: float(f"{v:.3g}") for k, v in rates.items()}}, indent=2))


if __name__ == "__main__":
    main()

"""Single-image latency (p50/p99) and batch throughput: PyTorch eager (batch norm folded, as
``vistrain predict`` loads a run, and as saved) vs ONNX fp32 vs ONNX int8, on 1 and 2 threads, side by side in one process (single images in interleaved rounds), on the run's
own validation images; a single image's time includes its normalisation, as a predictor's does.

    python benchmarks/latency.py RUN [--runs 60] [--batch 16] [--json out.json]

RUN must hold an export (``vistrain export RUN --int8``). Also prints file sizes and the
validation accuracy of each file as recorded by the export.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from vistrain.data.transforms import normalize, normalize_array
from vistrain.evaluation.predictor import Predictor
from vistrain.export.pipeline import decode, split_images
from vistrain.models.classifier import load_model
from vistrain.progress import SilentReporter
from vistrain.runtime import read_export


def timings(fn, inputs: list, runs: int, warmup: int = 5) -> np.ndarray:
    for x in inputs[:warmup]:
        fn(x)
    out = []
    for i in range(runs):
        x = inputs[i % len(inputs)]
        t = time.perf_counter()
        fn(x)
        out.append(time.perf_counter() - t)
    return np.array(out) * 1000


def ort_runner(sess, prep):
    return lambda x: sess.run(["logits"], {"pixels": normalize_array(x, prep)})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("--runs", type=int, default=60)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    folder, info = read_export(args.run)
    prep = info.preprocessing
    predictor = Predictor.from_folder(args.run)
    valid, _ = split_images(args.run, info.classes, predictor.config.extra, [])
    pixels, _ = decode(valid[: max(args.batch, 16)], prep, SilentReporter(), "decode", [])
    singles = [pixels[i : i + 1] for i in range(len(pixels))]
    batch = pixels[: args.batch]
    model = predictor.model
    unfolded = load_model(args.run)[0].to(memory_format=torch.channels_last)

    rows = []
    for threads in (1, 2):
        torch.set_num_threads(threads)

        def torch_runner(net):
            @torch.inference_mode()
            def run(x):
                return net(normalize(x, prep))
            return run

        engines = {"pytorch eager, norms folded": torch_runner(model),
                   "pytorch eager, as saved": torch_runner(unfolded)}
        for variant, entry in info.models.items():
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            opts.log_severity_level = 3
            sess = ort.InferenceSession(str(folder / entry["file"]), opts, providers=["CPUExecutionProvider"])
            engines[f"onnx {variant}"] = ort_runner(sess, prep)
        # Interleaved rounds: a noisy spell on this shared machine (a neighbour's job) then slows every
        # engine alike instead of whichever ran during it, and the ratios stay fair.
        rounds = 10
        single_ms = {name: [] for name in engines}
        for _ in range(rounds):
            for name, fn in engines.items():
                single_ms[name].append(timings(fn, singles, max(1, args.runs // rounds), warmup=2))
        for name, fn in engines.items():
            single = np.concatenate(single_ms[name])
            per_batch = timings(fn, [batch], max(5, args.runs // 10), warmup=1)
            rows.append({"engine": name, "threads": threads, "p50_ms": float(np.percentile(single, 50)),
                         "p99_ms": float(np.percentile(single, 99)),
                         "batch_img_per_s": float(len(batch) / (np.median(per_batch) / 1000))})
            print(f"{name:32s} {threads} thr  p50 {rows[-1]['p50_ms']:7.1f} ms  p99 {rows[-1]['p99_ms']:7.1f} ms  "
                  f"batch {len(batch)}: {rows[-1]['batch_img_per_s']:6.1f} img/s", flush=True)

    sizes = {"safetensors": (args.run / "model.safetensors").stat().st_size,
             **{f"onnx {v}": m["bytes"] for v, m in info.models.items()}}
    acc = {"pytorch": info.extra["validation"]["pytorch_accuracy"],
           **{f"onnx {v}": m["valid_accuracy"] for v, m in info.models.items()}}
    print(f"\ninput {prep.size} px, {info.extra['validation']['images']} validation images")
    for k, size in sizes.items():
        a = acc["pytorch" if k == "safetensors" else k]
        print(f"{k:16s} {size / 1e6:6.1f} MB  validation accuracy {a:.1%}")
    if args.json:
        args.json.write_text(json.dumps({"size": prep.size, "rows": rows, "bytes": sizes, "accuracy": acc}, indent=2))


if __name__ == "__main__":
    main()

"""fastai ``fine_tune(4)`` against vistrain's defaults, side by side in one run (issue #3).

    pip install -e '.[bench]'          # fastai, only for this benchmark
    python benchmarks/vs_fastai.py [DATASET] [--skip-fastai]

Each contender runs in its own subprocess (clean memory figures, no shared torch state), one after
the other, with cold caches. Printed for each: wall seconds, validation error, test right-of-N,
peak RSS; then the ratio of wall times. fastai uses the same EfficientNet-Lite0 ImageNet weights
(from the pip package, through vistrain's registry), batch 16, 224 px, its default augmentation
and head, normalised with the weights' mean/std. For vistrain the time at which its linear probe
was ready is printed too, and a warm second run (caches filled) in probe mode.
Reference measured on a quiet machine: fastai 21.1% validation error, 8/12, 231 s.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TEST_LABEL = re.compile(r"(.+)_\d+")


def run_fastai(data: Path) -> dict:
    import torch
    from fastai.vision.all import (
        ImageDataLoaders,
        L,
        Learner,
        Normalize,
        Resize,
        aug_transforms,
        create_head,
        error_rate,
        get_image_files,
        params,
    )
    from torch import nn

    from vistrain.models.registry import create_backbone

    t0 = time.perf_counter()
    dls = ImageDataLoaders.from_folder(
        data, train="train", valid="valid", item_tfms=Resize(224), bs=16, num_workers=0,
        batch_tfms=[*aug_transforms(size=224), Normalize.from_stats([0.5] * 3, [0.5] * 3)],
    )
    body = create_backbone("efficientnet_lite0", pretrained=True)
    body.reset_classifier(0, "")  # feature maps: fastai's head does its own (concat) pooling
    model = nn.Sequential(body, create_head(body.num_features, dls.c))
    learn = Learner(dls, model, metrics=error_rate, splitter=lambda m: L(m[0], m[1]).map(params))
    learn.fine_tune(4)
    valid_error = float(learn.validate()[1])
    test_files = get_image_files(data / "test")
    with torch.no_grad():
        preds, _ = learn.get_preds(dl=dls.test_dl(test_files))
    predicted = [dls.vocab[i] for i in preds.argmax(1).tolist()]
    right = sum(TEST_LABEL.match(f.stem).group(1) == p for f, p in zip(test_files, predicted))
    return {"wall_seconds": time.perf_counter() - t0, "valid_error": valid_error,
            "test_right": f"{right}/{len(test_files)}"}


class _Timestamps:
    """The reporter the CLI uses, plus the time each log line appeared (to see when the probe was ready)."""

    def __init__(self):
        from vistrain.progress import RichReporter

        self.inner, self.t0, self.lines = RichReporter(), time.perf_counter(), []

    def stage(self, *args, **kwargs):
        return self.inner.stage(*args, **kwargs)

    def log(self, message: str) -> None:
        self.lines.append((time.perf_counter() - self.t0, message))
        self.inner.log(message)


def run_vistrain(data: Path, warm: bool) -> dict:
    import vistrain

    work = Path(tempfile.mkdtemp(prefix="vistrain-vs-fastai-"))
    reporter = _Timestamps()
    t0 = time.perf_counter()
    run = vistrain.train(data, out=work / "run", cache_dir=work / "cache", reporter=reporter)
    out = {"wall_seconds": time.perf_counter() - t0, "valid_error": 1 - run.metrics["valid"]["accuracy"],
           "test_right": f"{run.metrics['test']['n'] - run.metrics['test']['errors']}/{run.metrics['test']['n']}",
           "stage_kept": run.result.stage, "probe_valid_error": 1 - run.result.probe_accuracy,
           "probe_ready_seconds": next(t for t, m in reporter.lines if m.startswith("Linear probe"))}
    if warm:
        t0 = time.perf_counter()
        again = vistrain.train(data, out=work / "warm", cache_dir=work / "cache", mode="probe")
        out["warm_probe_seconds"] = time.perf_counter() - t0
        out["warm_probe_valid_error"] = 1 - again.metrics["valid"]["accuracy"]
    return out


def child(which: str, data: Path) -> None:
    result = run_fastai(data) if which == "fastai" else run_vistrain(data, warm=True)
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", nargs="?", type=Path, default=HERE.parent.parent / "shared" / "datasets" / "climbing")
    ap.add_argument("--skip-fastai", action="store_true")
    ap.add_argument("--child", choices=["fastai", "vistrain"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.data)
    results = {}
    for which in ["vistrain"] + ([] if args.skip_fastai else ["fastai"]):
        print(f"--- {which} ---", flush=True)
        proc = subprocess.run([sys.executable, __file__, str(args.data), "--child", which],
                              stdout=subprocess.PIPE, text=True, check=False)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not lines:
            raise SystemExit(f"{which} failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}")
        results[which] = json.loads(lines[-1][len("RESULT "):])
    for which, r in results.items():
        print(f"{which:9s} {r['wall_seconds']:7.1f} s  valid error {r['valid_error']:.1%}  test {r['test_right']}"
              f"  peak RSS {r['peak_rss_gb']:.2f} GB")
    v = results["vistrain"]
    print(f"vistrain linear probe ready after {v['probe_ready_seconds']:.1f} s (valid error {v['probe_valid_error']:.1%});"
          f" warm re-run (probe): {v['warm_probe_seconds']:.1f} s")
    if "fastai" in results:
        f = results["fastai"]
        print(f"ratio vistrain/fastai wall time: {v['wall_seconds'] / f['wall_seconds']:.2f}"
              f" (probe ready: {v['probe_ready_seconds'] / f['wall_seconds']:.2f})")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

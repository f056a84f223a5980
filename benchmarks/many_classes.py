"""Many classes (a 200-species bird set, say): what train, audit and report cost, and what they show.

    python benchmarks/many_classes.py [--classes 150] [--per-class 10] [--out DIR]

Writes synthetic class folders (noisy striped textures, 96 px JPEGs; a class is a colour, a
stripe frequency and an angle, with enough noise that a linear probe gets some wrong), then runs
``vistrain train --mode probe``, ``vistrain audit`` and ``vistrain report`` as subprocesses and
prints, for each, wall seconds and peak RSS, plus what a reader gets: the report's confusion
matrix image size in pixels, the biggest near-duplicate group of the audit, and whether the train
summary fits the console. No real data needed; the figures are for the machine it runs on.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def write_classes(root: Path, classes: int, per_class: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:96, 0:96] / 96
    for c in range(classes):
        folder = root / f"species_{c:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        base = rng.integers(60, 196, 3)
        freq, angle = 1 + c % 7, np.deg2rad((c * 37) % 180)
        for i in range(per_class):
            wave = np.sin(2 * np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle)) + rng.uniform(0, 6))
            img = base[None, None] + 25 * wave[..., None] + rng.normal(0, 70, (96, 96, 3))
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"img_{i}.jpg", quality=90)


def timed(argv: list[str]) -> tuple[float, float, str]:
    """Wall seconds, the child's own peak RSS (GB) and its output (COLUMNS=120, as a terminal)."""
    import os

    t = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen([sys.executable, "-m", "vistrain", *argv], stdout=out, stderr=err,
                                 env={**os.environ, "COLUMNS": "120"})
        _, status, usage = os.wait4(child.pid, 0)  # this child's rusage alone
        child.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - t
        out.seek(0)
        err.seek(0)
        if child.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed ({child.returncode}):\n{err.read()[-2000:]}")
        return seconds, usage.ru_maxrss / 1024**2, out.read()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", type=int, default=150)
    ap.add_argument("--per-class", type=int, default=10)
    ap.add_argument("--out", type=Path, default=None, help="working folder (default: a temporary one)")
    args = ap.parse_args()
    work = args.out or Path(tempfile.mkdtemp(prefix="vistrain-many-"))
    data, run, cache = work / "data", work / "run", work / "cache"
    write_classes(data, args.classes, args.per_class)
    figures = {"classes": args.classes, "images": args.classes * args.per_class}

    s, gb, out = timed(["train", str(data), "--out", str(run), "--mode", "probe", "--ensemble", "off",
                        "--cache-dir", str(cache)])
    widest = max(map(len, out.splitlines()))
    figures["train"] = {"seconds": round(s, 1), "peak_rss_gb": round(gb, 2),
                        "valid_accuracy": json.loads((run / "metrics.json").read_text())["valid"]["accuracy"],
                        "summary_lines": len(out.splitlines()), "widest_line": widest}

    s, gb, out = timed(["audit", str(data), "--json", "--cache-dir", str(cache)])
    found = json.loads(out)["findings"]
    groups = [len(f["files"]) for f in found if f["kind"] in ("near_duplicate", "exact_duplicate")]
    figures["audit"] = {"seconds": round(s, 1), "peak_rss_gb": round(gb, 2),
                        "near_duplicate_groups": len(groups), "largest_group": max(groups, default=0),
                        "conflicts": sum(f["kind"] == "conflict" for f in found)}

    s, gb, _ = timed(["report", str(run), "--cache-dir", str(cache)])
    html = (run / "report.html").read_text()
    png = re.search(r'alt="confusion matrix"\s*src="data:image/png;base64,([^"]+)"', html).group(1)
    w, h = Image.open(io.BytesIO(base64.b64decode(png))).size
    figures["report"] = {"seconds": round(s, 1), "peak_rss_gb": round(gb, 2),
                         "html_mb": round(len(html) / 1e6, 1), "confusion_matrix_px": [w, h]}
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()

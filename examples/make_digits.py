"""Write scikit-learn's bundled handwritten digits (no download) as a folder of PNG photos per class.

    python examples/make_digits.py examples/digits --per-class 40
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--per-class", type=int, default=40, help="images per digit (at most ~180)")
    args = ap.parse_args()
    digits = load_digits()
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    rng = np.random.default_rng(0)
    written = 0
    for d in range(10):
        idx = np.flatnonzero(digits.target == d)
        for k, i in enumerate(rng.permutation(idx)[: args.per_class]):
            # 8x8 grey levels 0..16, dark ink on white paper, enlarged to 64x64 like a small scan.
            pixels = (255 - digits.images[i] * 255 / 16).astype(np.uint8)
            folder = args.out / names[d]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels, "L").resize((64, 64), Image.Resampling.BICUBIC).save(folder / f"{names[d]}_{k:03d}.png")
            written += 1
    print(f"wrote {written} images in {len(names)} class folders under {args.out}")


if __name__ == "__main__":
    main()

"""How well a run's familiarity check tells photos unlike its training photos, against the softmax.

    python benchmarks/familiarity.py RUN [--like FOLDER ...] [--unlike FOLDER ...] [--limit N]

For each folder: how many photos the familiarity check flags (nearest-neighbour similarity below
the run's threshold, set to keep 99% of its validation photos), and how many the top softmax
probability would flag at a threshold set by the same rule on the same validation photos, with
each score's AUROC against the validation photos. ``--like``: photos of the run's own kind (e.g.
its test folder: few should be flagged); ``--unlike``: photos of something else (all should be).
Defaults, for a climbing run: ../shared/datasets/climbing/test as like, clothing's test photos as
unlike; scikit-learn's handwritten digits (written out here) are always among the unlike.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import vistrain
from vistrain.data.split import split_rows
from vistrain.familiarity import Familiarity

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "datasets"


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """P(an outside photo scores below an inside one), ties counted half: higher is better."""
    inside, outside = np.asarray(inside)[:, None], np.asarray(outside)[None, :]
    return float(((outside < inside).sum() + 0.5 * (outside == inside).sum()) / (inside.size * outside.size))


def files(folder: Path, limit: int, seed: int = 0) -> list[Path]:
    found = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    random.Random(seed).shuffle(found)
    return sorted(found[:limit])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--like", type=Path, action="append")
    ap.add_argument("--unlike", type=Path, action="append")
    ap.add_argument("--limit", type=int, default=200, help="photos per folder at most (a seeded sample)")
    args = ap.parse_args()
    run = vistrain.load(args.run)
    fam: Familiarity | None = run.predictor.familiarity
    if fam is None:
        sys.exit(f"{args.run}: this run has no familiarity check (trained before it existed): train it again")
    tmp = tempfile.TemporaryDirectory()
    like = args.like or [SHARED / "climbing" / "test"]
    digits = Path(tmp.name) / "digits"
    subprocess.run([sys.executable, str(HERE.parent / "examples" / "make_digits.py"), str(digits),
                    "--per-class", "20"], check=True, capture_output=True)
    unlike = [*(args.unlike or [SHARED / "clothing" / "test"]), digits]

    valid = [r.found for r in split_rows(args.run / "split.csv", run.predictor.config.extra)
             if r.split == "valid" and r.found is not None]
    t0 = time.perf_counter()
    v = [p for p in run.predictor.predict_paths(valid) if p.error is None]
    v_sim = np.array([p.similarity for p in v])
    v_top = np.array([p.probabilities.max() for p in v])
    top_threshold = Familiarity.threshold_for(v_top)
    print(f"{args.run}: familiarity threshold {fam.threshold:.3f} ({fam.n_kept} of {fam.n_valid} validation photos "
          f"reach it); softmax threshold by the same rule: {top_threshold:.3f}; {len(fam.bank)} neighbours")
    rows = []
    for kind, folders in (("like", like), ("unlike", unlike)):
        for folder in folders:
            preds = [p for p in run.predictor.predict_paths(files(folder, args.limit)) if p.error is None]
            sim = np.array([p.similarity for p in preds])
            top = np.array([p.probabilities.max() for p in preds])
            name = "digits (scikit-learn)" if folder == digits else f"{folder.parent.name}/{folder.name}"
            rows.append([kind, name, len(preds), f"{np.mean(sim < fam.threshold):.1%}",
                         f"{np.mean(top < top_threshold):.1%}", f"{auroc(v_sim, sim):.3f}", f"{auroc(v_top, top):.3f}",
                         f"{np.median(sim):.3f}"])
    header = ["kind", "folder", "photos", "flagged (familiarity)", "flagged (softmax)", "AUROC familiarity",
              "AUROC softmax", "median similarity"]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    for line in [header, *rows]:
        print("  ".join(str(x).ljust(w) for x, w in zip(line, widths)))
    print(f"validation median similarity {np.median(v_sim):.3f}; {time.perf_counter() - t0:.0f} s")
    tmp.cleanup()


if __name__ == "__main__":
    main()

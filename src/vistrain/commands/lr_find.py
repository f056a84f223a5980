"""``vistrain lr-find``: the learning-rate range test, a plot and a suggested rate."""

from __future__ import annotations

import argparse
from pathlib import Path

from vistrain.commands import add_data_flags, add_device_flag, cache_dir

NAME = "lr-find"
ORDER = 15


def learning_rate(text: str) -> float | str:
    """``--lr`` of train: a number, or 'auto' to run the range test first."""
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a number nor 'auto'") from None


def register(sub) -> None:
    f = sub.add_parser(NAME, help="learning-rate range test: plot and suggested fine-tuning rate")
    f.add_argument("data", type=Path, help="the training data, as for train")
    f.add_argument("--out", type=Path, default=Path("lr_find.png"), help="where to save the plot (default lr_find.png)")
    f.add_argument("--steps", type=int, default=100, help="training steps in the test (default 100)")
    f.add_argument("--start", type=float, default=1e-7, help="first learning rate (default 1e-7)")
    f.add_argument("--end", type=float, default=1.0, help="last learning rate (default 1)")
    f.add_argument("--backbone", default="efficientnet_lite0")
    f.add_argument("--image-size", type=int, default=None, help="input size in pixels (default: from the photos)")
    f.add_argument("--batch-size", type=int, default=32)
    f.add_argument("--valid-fraction", type=float, default=0.2)
    f.add_argument("--seed", type=int, default=0)
    add_device_flag(f, "to train (on CUDA: mixed precision)")
    add_data_flags(f)


def run(args, console, reporter) -> int:
    from vistrain.api import find_lr
    from vistrain.evaluation.plots import lr_find as plot

    res = find_lr(args.data, reporter=reporter, label_from_name=args.label_from_name, valid_fraction=args.valid_fraction,
                  cache_dir=cache_dir(args), steps=args.steps, start=args.start, end=args.end,
                  backbone=args.backbone, image_size=args.image_size, batch_size=args.batch_size, seed=args.seed, device=args.device)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(plot(res.lrs, res.smoothed, res.suggestion if res.informative else None, res.steepest))
    if res.informative:
        console.print(f"[bold]Suggested learning rate {res.suggestion:.2g}[/] (a tenth of {res.min_loss_lr:.2g}, "
                      f"where the smoothed loss was lowest); steepest descent at {res.steepest:.2g}")
    else:
        lowest = int(res.smoothed.argmin())
        console.print(f"[bold]No suggestion[/]: the loss never fell from {res.lrs[0]:.2g} to {res.lrs[-1]:.2g} "
                      f"by more than noise (smoothed: {res.smoothed[0]:.2g} at first, lowest {res.smoothed[lowest]:.2g} "
                      f"at {res.lrs[lowest]:.2g}; the probe head already fits these photos, or the range starts "
                      "too high); train keeps its default --lr (--lr auto does the same)", highlight=False)
    console.print(f"  {len(res.lrs)} steps in {res.seconds:.0f} s"
                  + (" (stopped: the loss diverged)" if res.stopped_early else "") + f"; plot saved to {args.out}",
                  markup=False)
    if res.informative:
        console.print(f"  use it: vistrain train {args.data} --lr {res.suggestion:.2g}   (or --lr auto)", markup=False)
    return 0

"""Matplotlib figures for the report, drawn with the Agg canvas (no display, no pyplot state)
and returned as PNG bytes; :func:`data_uri` embeds them in HTML."""

from __future__ import annotations

import base64
import io
import warnings

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

SPLIT_COLOURS = {"train": "#4c78a8", "valid": "#f58518", "test": "#54a24b"}


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # Class names in a script the font lacks (日本 with only DejaVu installed) draw as boxes in
        # the chart; the report's tables name them in full, so one warning per glyph is only noise.
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from font", category=UserWarning)
        fig.savefig(buf, format="png")
    return buf.getvalue()


def data_uri(png: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(png).decode("ascii")


MANY_CLASSES = 40  # above this, one bar per class no longer fits a readable label: a size-ranked profile


def class_counts(counts: dict[str, dict[str, int]], classes: list[str]) -> bytes:
    """Horizontal grouped bars: images per class for each split; for many classes, stacked
    columns ranked by training images (the long tail at a glance, not a 14000-pixel-tall chart)."""
    splits = [s for s in ("train", "valid", "test") if s in counts]
    if len(classes) > MANY_CLASSES:
        return _ranked_counts(counts, classes, splits)
    fig = _figure(7, 0.35 * len(classes) * max(1, len(splits)) + 1.2)
    ax = fig.add_subplot()
    y = np.arange(len(classes))
    h = 0.8 / max(1, len(splits))
    for k, s in enumerate(splits):
        vals = [counts[s].get(c, 0) for c in classes]
        bars = ax.barh(y + (k - (len(splits) - 1) / 2) * h, vals, h, label=s, color=SPLIT_COLOURS[s])
        ax.bar_label(bars, fontsize=7, padding=2)
    ax.set_yticks(y, classes)
    ax.invert_yaxis()
    ax.set_xlabel("images")
    ax.legend(loc="lower right")
    return png_bytes(fig)


def _ranked_counts(counts: dict[str, dict[str, int]], classes: list[str], splits: list[str]) -> bytes:
    first = splits[0] if splits else "train"
    order = sorted(classes, key=lambda c: -counts.get(first, {}).get(c, 0))
    fig = _figure(9, 3.6)
    ax = fig.add_subplot()
    x = np.arange(len(order))
    bottom = np.zeros(len(order))
    for s in splits:
        vals = np.array([counts[s].get(c, 0) for c in order], dtype=float)
        ax.bar(x, vals, 1.0, bottom=bottom, label=s, color=SPLIT_COLOURS[s], linewidth=0)
        bottom += vals
    ax.set_xticks([])
    ax.set_xlim(-0.5, len(order) - 0.5)
    ax.set_xlabel(f"{len(order)} classes, most {first} images first (first: {order[0]}, last: {order[-1]})")
    ax.set_ylabel("images")
    ax.legend(loc="upper right")
    return png_bytes(fig)


def image_sizes(widths: np.ndarray, heights: np.ndarray) -> bytes:
    fig = _figure(9, 3.4)
    ax1, ax2 = fig.subplots(1, 2)
    ax1.scatter(widths, heights, s=8, alpha=0.4, color="#4c78a8")
    ax1.set_xlabel("width (px)")
    ax1.set_ylabel("height (px)")
    ax1.set_title("image sizes")
    ratio = widths / np.maximum(heights, 1)
    ax2.hist(ratio, bins=30, color="#72b7b2")
    ax2.set_xlabel("aspect ratio (width / height)")
    ax2.set_ylabel("images")
    ax2.set_title("aspect ratios")
    return png_bytes(fig)


def training_curves(history: list[dict]) -> bytes:
    epochs = [int(h["epoch"]) for h in history]
    fig = _figure(9, 3.2)
    ax1, ax2 = fig.subplots(1, 2)
    for key, ax, label in (("loss", ax1, "loss"), ("accuracy", ax2, "accuracy")):
        ax.plot(epochs, [float(h[f"train_{key}"]) for h in history], "o-", label="train", color=SPLIT_COLOURS["train"])
        ax.plot(epochs, [float(h[f"valid_{key}"]) for h in history], "o-", label="validation", color=SPLIT_COLOURS["valid"])
        ax.set_xlabel("epoch")
        ax.set_title(label)
        ax.legend()
    return png_bytes(fig)


def confusion(cm: np.ndarray, classes: list[str], row_totals: np.ndarray | None = None) -> bytes:
    """Counts and row-normalised shares side by side (rows: actual, columns: predicted).

    ``row_totals``: each row's images when ``cm`` is a part of a larger matrix (shares stay shares
    of the whole class)."""
    cm = np.asarray(cm)
    k = len(classes)
    rows = (cm.sum(axis=1) if row_totals is None else np.asarray(row_totals)).reshape(-1, 1)
    norm = np.divide(cm, rows, out=np.zeros_like(cm, dtype=float), where=rows > 0)
    side = max(3.5, 0.45 * k + 2)
    fig = _figure(2 * side + 0.5, side)
    for ax, values, title, fmt in zip(fig.subplots(1, 2), (cm, norm), ("counts", "share of each actual class"),
                                      ("{:d}", "{:.0%}")):
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(k), classes, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(k), classes, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("actual")
        ax.set_title(title)
        for i in range(k):
            for j in range(k):
                v = values[i, j]
                if v:
                    ax.text(j, i, fmt.format(int(v) if fmt == "{:d}" else v), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    return png_bytes(fig)


def reliability(before: list, after: list, ece_before: float, ece_after: float, temperature: float) -> bytes:
    """Reliability diagrams (confidence vs accuracy per bin) before and after temperature scaling."""
    fig = _figure(9, 3.6)
    for ax, bins, title in zip(fig.subplots(1, 2), (before, after),
                               (f"raw softmax: ECE {ece_before:.1%}", f"temperature {temperature:.2f}: ECE {ece_after:.1%}")):
        mids = [(b.low + b.high) / 2 for b in bins]
        width = bins[0].high - bins[0].low
        ax.bar(mids, [b.accuracy if b.count else 0 for b in bins], width * 0.95, color="#4c78a8", label="accuracy")
        # The gap spans accuracy..confidence whichever is higher (over- or under-confident bins).
        ax.bar(mids, [abs(b.confidence - b.accuracy) if b.count else 0 for b in bins], width * 0.95,
               bottom=[min(b.accuracy, b.confidence) if b.count else 0 for b in bins], color="none",
               edgecolor="#e45756", hatch="///", linewidth=0.8, label="gap to confidence")
        ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect")
        for m, b in zip(mids, bins):
            if b.count:
                ax.text(m, 0.02, str(b.count), ha="center", fontsize=7, color="white" if b.accuracy > 0.08 else "black")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (top probability)")
        ax.set_ylabel("accuracy")
        ax.set_title(title)
        ax.legend(loc="upper left", fontsize=8)
    return png_bytes(fig)


def coverage(cov: np.ndarray, acc: np.ndarray, target: float, chosen: tuple[float, float] | None) -> bytes:
    fig = _figure(6, 3.6)
    ax = fig.add_subplot()
    ax.plot(np.r_[0, cov], np.r_[acc[0] if len(acc) else 1, acc], color="#4c78a8", drawstyle="steps-post")
    ax.axhline(target, ls="--", color="grey", label=f"target precision {target:.0%}")
    if chosen is not None:
        ax.plot([chosen[0]], [chosen[1]], "o", color="#e45756", label=f"threshold: {chosen[0]:.0%} answered")
    ax.set_xlabel("coverage (share of images answered)")
    ax.set_ylabel("accuracy of the answered images")
    ax.set_xlim(0, 1.02)
    low = min([target] + list(acc)) if len(acc) else target
    ax.set_ylim(max(0.0, low - 0.05), 1.01)
    ax.legend(loc="lower left")
    return png_bytes(fig)


def lr_find(lrs: np.ndarray, losses: np.ndarray, suggestion: float | None, steepest: float | None = None) -> bytes:
    """The range test's curve; ``suggestion`` None when the loss did not fall enough to suggest a rate
    (the plot then marks nothing, as the command suggests nothing)."""
    fig = _figure(6, 3.6)
    ax = fig.add_subplot()
    ax.plot(lrs, losses, color="#4c78a8", label="smoothed loss")
    ax.set_xscale("log")
    if suggestion is not None:
        ax.axvline(suggestion, color="#e45756", ls="--", label=f"suggested {suggestion:.2g}")
    if steepest is not None and suggestion is not None:
        ax.axvline(steepest, color="#54a24b", ls=":", label=f"steepest descent {steepest:.2g}")
    ax.set_xlabel("learning rate (head)")
    ax.set_ylabel("training loss (smoothed)")
    ax.legend()
    return png_bytes(fig)

"""Where a stored threshold sits: between validation images, never on one (no dependencies, so
``training`` and ``evaluation`` can share the rule without importing each other)."""

from __future__ import annotations

EDGE = 1e-4  # below the last image kept when none is flagged: far above float noise (~1e-6)


def threshold_between(kept: float, flagged: float | None) -> float:
    """A threshold halfway between the lowest score kept and the highest flagged (``EDGE`` below the
    kept one when none is), never on an image's own score: there, float rounding in ONNX Runtime or
    another batch size put that image on either side. The rule of every stored threshold (the
    "unsure" and the "unfamiliar" ones).
    """
    below = kept - 2 * EDGE if flagged is None else flagged
    return float((kept + below) / 2)

"""Which file of a group of duplicates to keep, and why, in a few words.

The review page proposes to quarantine every copy but one. Sorting by name alone kept
``img_5 copy.png`` and offered ``img_5.png`` (a space sorts before a dot), so the choice follows
what a person would pick: the name that is not a copy's, then the shallower and shorter path, then
the older file, and the name only when all of these tie (so the choice never depends on scan order).
Before all of these, a group whose copies straddle the splits keeps its training copy: the copy in
valid/ or test/ is the leak (the model is scored on a photo it trained on), so it is the one to move out.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import PurePosixPath

from vistrain.data.layout import nfc

# Names file managers and browsers give copies: "x copy", "x copy 2" (macOS), "x - Copy",
# "x - Copy (2)" (Windows), "x (1)" (Windows, browsers' downloads; three digits at most, so
# "party (2019)" is not one), "x (copy)", "x (another copy)",
# "x (3rd copy)" (GNOME), "Copy of x", "Copy (2) of x" (Windows XP, Google Drive); "x_copy" and
# "copy_of_x" as people type them.
_COPY_SUFFIX = re.compile(
    r"(?:\s*-\s*copy(?:\s*\(\d+\))?|[\s_-]copy(?:[\s_-]?\d+)?|\s*\((?:\d{1,3}|copy|another copy|\d+(?:st|nd|rd|th) copy)\))$",
    re.IGNORECASE)
_COPY_PREFIX = re.compile(r"^copy(?:\s*\(\d+\))?[\s_-]of[\s_-]", re.IGNORECASE)
# "x_1", "x-2": a copy only beside "x" itself ("img_1" and "img_2" are two photos of a burst). It
# is also the name ``clean`` gives a file moved onto a taken name.
_NUMBERED = re.compile(r"^(.+?)[_-]\d+$")

WHY = ("not named like a copy", "shallowest path", "shortest path", "oldest", "first by name")
TRAIN = "train"
# How the reason names the splits a training photo leaked into, in this order.
HELD_OUT = {"valid": "validation", "test": "test"}


def _stem(path: str) -> str:
    return nfc(PurePosixPath(path).stem).casefold()


def _original_stem(stem: str) -> str:
    """``stem`` without the marks of a copy (repeated: "x copy (1)" is "x")."""
    while True:
        bare = _COPY_PREFIX.sub("", _COPY_SUFFIX.sub("", stem))
        if bare == stem or not bare:
            return stem
        stem = bare


def looks_like_copy(path: str, others: Sequence[str] = ()) -> bool:
    """Whether the file name of ``path`` is one a copy gets; ``others``: the group's other paths,
    against which a numbered name (``x_1``) is checked."""
    return _is_copy(_stem(path), _bases(others))


def _bases(paths: Sequence[str]) -> set[str]:
    return {s for p in paths for s in (_stem(p), _original_stem(_stem(p)))}


def _is_copy(stem: str, bases: set[str]) -> bool:
    """``bases`` may hold ``stem``'s own names: a numbered name is only checked with its number off."""
    if _original_stem(stem) != stem:
        return True
    m = _NUMBERED.match(stem)
    while m:  # "x_1_2" beside "x" too: a copy of a copy
        if m.group(1) in bases:
            return True
        m = _NUMBERED.match(m.group(1))
    return False


def _keys(paths: Sequence[str], mtimes: Sequence[float | None], splits: Sequence[str | None]) -> list[tuple]:
    bases = _bases(paths)  # once for the group: thousands of copies of one placeholder happen
    keys = []
    for p, t, split in zip(paths, mtimes, splits, strict=True):
        # A file that could not be looked at is taken as the newest: no reason to prefer it.
        age = t if t is not None else float("inf")
        # Ties (all False or all True) unless the group has a training copy and another one.
        held_out = split != TRAIN
        keys.append((held_out, _is_copy(_stem(p), bases), len(PurePosixPath(p).parts), len(p), age, p))
    return keys


def _leak_reason(splits: Sequence[str | None]) -> str:
    """Why the training copy is kept, naming the splits its other copies are in."""
    others = [s for s in splits if s != TRAIN]
    names = [HELD_OUT[s] for s in HELD_OUT if s in others]
    names += sorted(str(s) for s in set(others) - set(HELD_OUT))  # no split a layout gives today
    copies = "copy leaks" if len(others) == 1 else "copies leak"
    return f"the training copy: the {' and '.join(names)} {copies} a training image"


def keep_order(paths: Sequence[str], mtimes: Sequence[float | None] | None = None,
               splits: Sequence[str | None] | None = None) -> tuple[list[int], str]:
    """Indices of ``paths`` (relative to the data folder), the one to keep first; and why it is kept,
    in a few words (each rule that set it apart from the others still tied, e.g. "not named like a
    copy; oldest"). ``mtimes``: modification times, None where unknown; ``splits``: each file's split
    ("train", "valid", "test", or None where the layout has none)."""
    if not paths:
        raise ValueError("keep_order needs at least one path")
    splits = splits if splits is not None else [None] * len(paths)
    keys = _keys(paths, mtimes if mtimes is not None else [None] * len(paths), splits)
    order = sorted(range(len(paths)), key=lambda i: keys[i])
    # Eliminate rule by rule, as the sort does, naming each rule that removed someone.
    why, tied = [], list(range(len(paths)))
    for rule in range(len(WHY) + 1):
        best = min(keys[i][rule] for i in tied)
        left = [i for i in tied if keys[i][rule] == best]
        if len(left) < len(tied):
            why.append(_leak_reason(splits) if rule == 0 else WHY[rule - 1])
        tied = left
        if len(tied) == 1:
            break
    return order, "; ".join(why)

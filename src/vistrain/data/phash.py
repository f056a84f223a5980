"""Perceptual hash (pHash: low frequencies of a DCT) and duplicate clusters from content + hash.

Lives in ``data`` because the split needs it (duplicates stay on one side); ``vistrain.clean``
builds its near-duplicate findings on the same functions.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

HASH_SIZE = 8  # 8x8 low-frequency DCT coefficients -> 64 bits
_SAMPLE = 32  # the image is reduced to 32x32 grey first, as in the published pHash
# Measured on clothing and climbing (README "Clean your data"): distances are even (32 bits above the
# median each), 0 was the same photo every time, 4-6 already joined different garments shot the same way
# on the same floor; so the hash alone only joins 0-2 bits; backbone features find the rest.
NEAR_BITS = 2
# pHash sees only grey structure: the same shirt in red and in blue, or a ripe and an unripe tomato on
# the same tray, hash alike (0 bits), and a colour-as-class dataset then looked like one big cluster of
# "conflicts" that the split kept on one side. So near pairs must also match in colour: the mean RGB of
# each quarter of the image within COLOUR_TOL (of 255). Measured on 60 climbing photos, the largest
# change per quarter was 2 for JPEG at quality 30 or halving the size, 7 for contrast +10%, 14 for a 5%
# crop, 17 for saturation +20%, 20 for brightness +10%; red against blue differs by over 100.
COLOUR_TOL = 32


def _dct_rows(n: int, k: int) -> np.ndarray:
    """The first ``k`` rows of the (unnormalised) DCT-II matrix of size ``n``."""
    i = np.arange(n)
    return np.cos(np.pi * np.outer(np.arange(k), 2 * i + 1) / (2 * n))


_DCT = _dct_rows(_SAMPLE, HASH_SIZE)


def phash(img: Image.Image) -> str:
    """64-bit perceptual hash as 16 hex digits: each bit says whether a low-frequency DCT
    coefficient of the 32x32 grey image is above the median of the 64 (Zauner 2010)."""
    grey = np.asarray(img.convert("L").resize((_SAMPLE, _SAMPLE), Image.Resampling.LANCZOS), dtype=np.float64)
    coeffs = _DCT @ grey @ _DCT.T
    bits = (coeffs > np.median(coeffs)).ravel()
    return f"{int(''.join('1' if b else '0' for b in bits), 2):016x}"


def colour_signature(img: Image.Image) -> str:
    """The mean colour of each quarter of the image (2x2 cells, RGB, 0-255) as 24 hex digits."""
    cells = np.asarray(img.convert("RGB").resize((2, 2), Image.Resampling.BOX), dtype=np.uint8)
    return cells.tobytes().hex()


# A signature whose cells all have channels within this of each other is black and white (or sepia-free grey).
GREY_CHROMA = 12


def same_colours(a: str | None, b: str | None, tol: int = COLOUR_TOL) -> bool:
    """Do two colour signatures match within ``tol`` in every cell and channel? (Unknown: yes.)

    When either photo is black and white, brightness is compared instead: a black-and-white edit of
    a colour photo is still that photo (kept together, it cannot leak across the split).
    """
    if not a or not b:
        return True
    ca = np.frombuffer(bytes.fromhex(a), np.uint8).astype(float).reshape(-1, 3)
    cb = np.frombuffer(bytes.fromhex(b), np.uint8).astype(float).reshape(-1, 3)
    if min(_chroma(ca), _chroma(cb)) <= GREY_CHROMA:
        luma = np.array([0.299, 0.587, 0.114])
        return float(np.abs(ca @ luma - cb @ luma).max()) <= tol
    return float(np.abs(ca - cb).max()) <= tol


def _chroma(cells: np.ndarray) -> float:
    return float((cells.max(axis=1) - cells.min(axis=1)).max())


def hash_array(hashes: list[str]) -> np.ndarray:
    return np.array([int(h, 16) for h in hashes], dtype=np.uint64)


def near_pairs(hashes: np.ndarray, max_bits: int) -> list[tuple[int, int, int]]:
    """Every pair (i, j, distance) with i < j whose hashes differ in at most ``max_bits`` bits."""
    out = []
    for i in range(len(hashes) - 1):
        d = np.bitwise_count(hashes[i] ^ hashes[i + 1 :])
        for j in np.flatnonzero(d <= max_bits):
            out.append((i, i + 1 + int(j), int(d[j])))
    return out


def clusters(n: int, pairs) -> list[list[int]]:
    """Connected components (union-find) of ``n`` items joined by ``pairs``; singletons included."""
    parent = list(range(n))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for pair in pairs:
        ra, rb = find(pair[0]), find(pair[1])
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    return list(groups.values())


def duplicate_groups(sha1s: list[str | None], phashes: list[str | None], max_bits: int = NEAR_BITS,
                     extra_pairs=(), colours: list[str | None] | None = None) -> list[list[int]]:
    """Clusters of items that are byte-identical, or whose perceptual hashes are within ``max_bits``
    or that ``extra_pairs`` (i, j, ...) join, provided their ``colours`` (:func:`colour_signature`)
    match too (:func:`same_colours`).

    Connected components: a chain of look-alikes (a burst of shots) is one cluster even where its
    ends differ, which is what keeps it on one side of a split. :func:`tight_groups` gives the
    groups whose members are all alike, for telling a person "these are copies"."""
    return clusters(len(sha1s), duplicate_links(sha1s, phashes, max_bits, extra_pairs, colours))


def duplicate_links(sha1s: list[str | None], phashes: list[str | None], max_bits: int = NEAR_BITS,
                    extra_pairs=(), colours: list[str | None] | None = None) -> list[tuple]:
    """The pairs :func:`duplicate_groups` joins: (i, j, ...) for each near pair, (first, i) for
    each later copy of the same bytes."""
    near: list[tuple] = list(extra_pairs)
    known = [i for i, h in enumerate(phashes) if h]
    if max_bits >= 0 and len(known) > 1:
        arr = hash_array([phashes[i] for i in known])
        near += [(known[a], known[b]) for a, b, _ in near_pairs(arr, max_bits)]
    if colours is not None:
        near = [p for p in near if same_colours(colours[p[0]], colours[p[1]])]
    pairs: list[tuple] = near
    first: dict[str, int] = {}
    for i, s in enumerate(sha1s):
        if s is not None:
            pairs.append((first.setdefault(s, i), i))
    return pairs


def tight_groups(sha1s: list[str | None], links) -> list[list[int]]:
    """Groups of two or more items, each alike to the group's centre (linked to it, or
    byte-identical): the components of ``links`` split where they only chain.

    Single linkage chains: on 1500 noisy synthetic textures in 150 classes, backbone features
    joined 1290 of them into one "near-identical" group that claimed 130 labels for one photo.
    Within each component, the item with the most links is a centre and takes every item linked to
    it; the rest start again. A component with one item alike to all the others (a photo and its
    copies; a black-and-white copy that matches a red and a blue version) stays whole.
    Deterministic: ties go to the lower index."""
    node = {}
    first: dict[str, int] = {}
    for i, s in enumerate(sha1s):
        node[i] = first.setdefault(s, i) if s is not None else i  # identical bytes: one node
    members: dict[int, list[int]] = {}
    for i, n in node.items():
        members.setdefault(n, []).append(i)
    adj: dict[int, set[int]] = {n: set() for n in members}
    for pair in links:
        a, b = node[pair[0]], node[pair[1]]
        if a != b:
            adj[a].add(b)
            adj[b].add(a)
    groups: list[list[int]] = []
    for comp in clusters(len(sha1s), [(node[p[0]], node[p[1]]) for p in links]):
        left = {n for n in comp if n in members}
        while left:
            centre = min(left, key=lambda n: (-len(adj[n] & left), n))
            chosen = {centre} | (adj[centre] & left)
            left -= chosen
            group = sorted(i for n in chosen for i in members[n])
            if len(group) > 1:
                groups.append(group)
    return groups

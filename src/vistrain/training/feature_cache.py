"""Frozen-backbone features on disk, keyed by backbone + preprocessing + file content (sha1).

A second run on the same photos (or a run on a folder sharing photos with an earlier one) reads
the features instead of computing them. Each run appends one shard (safetensors); nothing is
rewritten, so concurrent runs cannot corrupt each other's results.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from vistrain.data.transforms import Preprocessing

# Bump when the decoding or feature path changes in a way that alters the numbers.
FEATURE_CACHE_VERSION = 1
_MAX_SHARDS = 32


class FeatureCache:
    def __init__(self, root: Path | None, backbone: str, prep: Preprocessing):
        self.root, self.backbone, self.folder = root, backbone, None
        if root is not None:
            name = f"v{FEATURE_CACHE_VERSION}-{backbone}-{prep.key()}-torch{torch.__version__.split('+')[0]}"
            self.folder = Path(root) / "features" / name
        self._vectors: dict[str, np.ndarray] | None = None

    def _load(self) -> dict[str, np.ndarray]:
        if self._vectors is None:
            self._vectors = {}
            if self.folder is not None and self.folder.exists():
                for shard in sorted(self.folder.glob("*.safetensors")):
                    try:
                        self._vectors.update(load_file(str(shard)))
                    except (OSError, ValueError, SafetensorError):
                        continue  # a shard cut short by a crash is only lost work
        return self._vectors

    def get(self, keys: list[str]) -> tuple[np.ndarray | None, list[int]]:
        """Cached vectors stacked in ``keys`` order (None where missing), and the missing positions."""
        vectors = self._load()
        missing = [i for i, k in enumerate(keys) if k not in vectors]
        if len(missing) == len(keys):
            return None, missing
        dim = next(vectors[k] for k in keys if k in vectors).shape[0]
        out = np.zeros((len(keys), dim), dtype=np.float32)
        for i, k in enumerate(keys):
            if k in vectors:
                out[i] = vectors[k]
        return out, missing

    def put(self, keys: list[str], features: np.ndarray) -> None:
        vectors = self._load()
        new = {k: np.ascontiguousarray(f, dtype=np.float32) for k, f in zip(keys, features) if k not in vectors}
        vectors.update(new)
        if self.folder is None or not new:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        shards = sorted(self.folder.glob("*.safetensors"))
        if len(shards) >= _MAX_SHARDS:
            # Compact: one shard with everything known, then drop the old ones.
            new, stale = dict(vectors), shards
        else:
            stale = []
        tmp = self.folder / f".{uuid.uuid4().hex}.tmp"
        save_file(new, str(tmp))
        os.replace(tmp, self.folder / f"{uuid.uuid4().hex}.safetensors")
        for s in stale:
            s.unlink(missing_ok=True)

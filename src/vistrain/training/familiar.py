"""The kept model's familiarity check (:mod:`vistrain.familiarity`): pooled features of the
training photos (a sample beyond ``MAX_BANK``) as neighbours, and of the validation photos to set
the threshold.

A probe's backbone is the frozen one whose features are cached: they cost nothing more. A
fine-tuned backbone sees differently, so its features take one more pass (climbing: 316 training
and 109 validation photos at 352 px, ~30 s on 2 cores).
"""

from __future__ import annotations

import numpy as np

from vistrain.data.pixel_cache import PixelCache
from vistrain.data.transforms import Preprocessing
from vistrain.familiarity import Familiarity, bank_sample
from vistrain.models.registry import ensemble_members, get_backbone
from vistrain.progress import Reporter
from vistrain.training.feature_cache import FeatureCache
from vistrain.training.features import backbone_features, extract_features, faster_copy
from vistrain.training.pixels import decode_all


def fit_familiarity(ui: Reporter, stage: str, model, backbone_name: str, train: list, y_train: np.ndarray,
                    valid: list, prep: Preprocessing, caches: list[FeatureCache], pixel_cache: PixelCache | None,
                    valid_pixels: np.ndarray | None, seed: int = 0,
                    known: tuple[np.ndarray, np.ndarray] | None = None) -> Familiarity | None:
    """``known``: the probe's own (train, valid) features when they are the kept model's.
    ``valid_pixels``: decoded whenever fine-tuning ran, so a fine-tuned model always has them."""
    if not train or not valid:
        return None
    sample = bank_sample(y_train, seed=seed)
    records = [train[i] for i in sample]
    if stage == "probe":
        if known is not None:
            f_train, f_valid = known[0][sample], known[1]
        else:
            f_train = backbone_features(ui, model.backbone, records, prep, caches, pixel_cache=pixel_cache,
                                        split="training")
            f_valid = backbone_features(ui, model.backbone, valid, prep, caches, valid_pixels, pixel_cache,
                                        split="validation")
    else:
        with ui.stage("decode", len(records)) as advance:
            pixels, _ = decode_all([r.path for r in records], prep, progress=advance, cache=pixel_cache,
                                   keys=[r.sha1 for r in records] if pixel_cache is not None else None)
        # One faster copy for both passes (extract_features would make one per call).
        backbone = faster_copy(model.backbone, valid_pixels, prep)
        with ui.stage("familiar", len(records) + len(valid)) as advance:
            f_train = extract_features(backbone, pixels, prep, progress=advance)
            f_valid = extract_features(backbone, valid_pixels, prep, progress=advance)
    blocks = [get_backbone(m).num_features for m in ensemble_members(backbone_name)]
    return Familiarity.fit(f_train, f_valid, blocks)

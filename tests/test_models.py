"""Backbone registry: real pretrained weights, strict mapping, preprocessing declared per entry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vistrain.data.transforms import (
    Preprocessing,
    normalize,
    to_model_pixels,
    to_train_canvas,
)
from vistrain.models import BACKBONES, BackboneError, create_backbone, get_backbone

IMAGENET_CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def test_registry_lists_the_four_backbones_with_preprocessing():
    assert set(BACKBONES) == {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "mobilenet_v2"}
    lite = get_backbone("efficientnet_lite0").preprocessing()
    assert (lite.size, lite.mean, lite.std, lite.interpolation) == (224, (0.5,) * 3, (0.5,) * 3, "bicubic")
    assert get_backbone("efficientnet_lite2").native_size == 260


def test_unknown_backbone_lists_the_choices():
    with pytest.raises(BackboneError, match="efficientnet_lite0.*mobilenet_v2"):
        get_backbone("resnet50")


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite2"])
def test_imagenet_head_recognises_a_cat(name):
    """If the weights were not really pretrained, a photo of a cat would not come out as a cat."""
    skimage_data = pytest.importorskip("skimage.data")
    spec = get_backbone(name)
    prep = spec.preprocessing()
    model = create_backbone(name, imagenet_head=True).eval()
    x = normalize(to_model_pixels(Image.fromarray(skimage_data.chelsea()), prep), prep)
    with torch.inference_mode():
        probs = model(x).softmax(1)[0]
    top = set(probs.topk(3).indices.tolist())
    assert top <= IMAGENET_CATS
    assert probs[list(IMAGENET_CATS)].sum() > 0.8


def test_mobilenet_v2_weights_are_real_imagenet_features():
    pytest.importorskip("torchvision")
    skimage_data = pytest.importorskip("skimage.data")
    model = create_backbone("mobilenet_v2").eval()
    # Trained BatchNorm statistics, not the initial zeros/ones.
    bn = model.features[5].conv[0][1]
    assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
    prep = get_backbone("mobilenet_v2").preprocessing()
    cat = to_model_pixels(Image.fromarray(skimage_data.chelsea()), prep)
    cat_flip = cat[:, ::-1].copy()
    coffee = to_model_pixels(Image.fromarray(skimage_data.coffee()), prep)
    with torch.inference_mode():
        f = torch.nn.functional.normalize(model(normalize(np.stack([cat, cat_flip, coffee]), prep)), dim=1)
    # A pretrained extractor sees a mirrored cat as the same thing, and coffee as something else.
    assert float(f[0] @ f[1]) > float(f[0] @ f[2]) + 0.2


def _picture():
    img = Image.new("RGB", (200, 100), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 50, 100))  # red quarter on the left
    return img


def test_resize_methods():
    base = {"mean": (0.5,) * 3, "std": (0.5,) * 3}
    crop = to_model_pixels(_picture(), Preprocessing(64, **base, resize="crop"))
    pad = to_model_pixels(_picture(), Preprocessing(64, **base, resize="pad"))
    squish = to_model_pixels(_picture(), Preprocessing(64, **base, resize="squish"))
    assert crop.shape == pad.shape == squish.shape == (64, 64, 3)
    assert crop[32, 2, 2] > 200  # the centre square has no red: blue at the left edge
    assert pad[0, 32].tolist() == [128, 128, 128]  # padding in the mean colour (zero after normalising)
    assert squish[32, 2, 0] > 200 and squish[32, 20, 2] > 200  # all of the scene, squeezed


def test_train_canvas_keeps_the_whole_scene_at_a_margin():
    prep = Preprocessing(64, (0.5,) * 3, (0.5,) * 3)
    canvas = to_train_canvas(_picture(), prep)
    assert canvas.shape == (74, 148, 3)  # shorter side 64 * 1.15, aspect kept
    assert canvas[37, 2, 0] > 200


def test_invalid_preprocessing_is_refused_with_the_value():
    with pytest.raises(ValueError, match="'stretch'"):
        Preprocessing(64, (0.5,) * 3, (0.5,) * 3, resize="stretch")


def test_onnx_runtime_features_match_pytorch(tmp_path):
    from vistrain.training.features import extract_features, onnx_session

    prep = get_backbone("efficientnet_lite0").preprocessing(64)
    backbone = create_backbone("efficientnet_lite0").eval()
    pixels = np.random.default_rng(0).integers(0, 255, (5, 64, 64, 3), dtype=np.uint8)
    session = onnx_session(backbone, "efficientnet_lite0", prep, tmp_path)
    assert session is not None and list((tmp_path / "onnx").glob("*.onnx"))
    a = extract_features(backbone, pixels, prep, batch_size=2)
    b = extract_features(backbone, pixels, prep, batch_size=2, session=session)
    assert a.shape == b.shape == (5, 1280)
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)

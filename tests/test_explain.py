"""Grad-CAM, heat maps, test-time augmentation and the confidence settings stored in every run."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import make_image
from PIL import Image

import vistrain
from vistrain.cli import main
from vistrain.data.images import load_rgb
from vistrain.data.transforms import normalize, to_model_pixels
from vistrain.evaluation.gradcam import grad_cam
from vistrain.evaluation.predictor import Predictor, softmax
from vistrain.heatmap import cam_from_features


@pytest.fixture(scope="module")
def predictor(trained_run):
    return Predictor.from_folder(trained_run[0])


def _pixels(predictor, paths):
    prep = predictor.config.preprocessing
    return np.stack([to_model_pixels(load_rgb(p), prep) for p in paths])


def test_grad_cam_equals_the_class_activation_map(predictor, trained_run):
    _, data = trained_run
    px = _pixels(predictor, [data / "circles" / "circles_0.png", data / "stripes" / "stripes_1.png"])
    model, prep = predictor.model, predictor.config.preprocessing
    with torch.no_grad():
        feats = model.backbone.forward_features(normalize(px, prep)).float().numpy()
    for c in range(len(predictor.classes)):
        cams = grad_cam(model, predictor.config.backbone, px, prep, np.array([c, c]))
        assert cams.shape == feats.shape[:1] + feats.shape[2:]
        for i in range(2):
            expected = cam_from_features(feats[i], model.head.weight[c].detach().numpy())
            np.testing.assert_allclose(cams[i], expected, atol=1e-4)
    # Different classes look at different evidence: the maps are not all alike.
    a = grad_cam(model, predictor.config.backbone, px[:1], prep, np.array([0]))
    b = grad_cam(model, predictor.config.backbone, px[:1], prep, np.array([1]))
    assert np.abs(a - b).max() > 0.1
    assert not any(p.grad is not None for p in model.parameters())  # leaves the model as it found it


def test_training_stores_temperature_and_threshold(trained_run):
    run_dir, _ = trained_run
    cfg = json.loads((run_dir / "config.json").read_text())
    cal = cfg["calibration"]
    assert cfg["temperature"] > 0 and cal["fitted_on"] == "validation"
    assert {"ece_before", "ece_after", "target_precision", "coverage"} <= set(cal)
    assert cal["target_precision"] == 0.95 and cal["coverage"] > 0 and 0 < cfg["unsure_threshold"] <= 1


def test_predict_uses_the_stored_temperature_and_threshold(trained_run, tmp_path):
    run_dir, data = trained_run
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    cfg = json.loads((run / "config.json").read_text())
    cfg.update(temperature=1000.0, unsure_threshold=0.5)
    (run / "config.json").write_text(json.dumps(cfg))
    rows = vistrain.predict(run, [data / "squares"])
    # T = 1000 flattens every answer to about 1/3, below the stored 0.5: all unsure by default...
    assert all(abs(r["probability"] - 1 / 3) < 0.01 and r["unsure"] for r in rows)
    # ...and an explicit value wins (0: never unsure).
    assert not any(r["unsure"] for r in vistrain.predict(run, [data / "squares"], unsure=0.0))


def test_tta_averages_the_mirror_image(predictor, trained_run):
    _, data = trained_run
    paths = [data / "circles" / "circles_3.png", data / "squares" / "squares_4.png"]
    px = _pixels(predictor, paths)
    views = predictor.view_logits(px, 2)
    np.testing.assert_allclose(views[:, 0], predictor.logits_from_pixels(px), atol=1e-5)
    np.testing.assert_allclose(views[:, 1], predictor.logits_from_pixels(np.ascontiguousarray(px[:, :, ::-1])), atol=1e-5)
    preds = predictor.predict_paths(paths, tta=True)
    expected = softmax(views.mean(axis=1), predictor.config.temperature)
    np.testing.assert_allclose(np.stack([p.probabilities for p in preds]), expected, atol=1e-5)
    assert not np.allclose(views[:, 0], views[:, 1])  # the mirror is a different view


def test_evaluate_and_predict_flags(trained_run, tmp_path, capsys):
    run_dir, data = trained_run
    assert main(["evaluate", str(run_dir), str(data), "--tta", "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["tta"]["accuracy_tta"] == m["accuracy"]
    assert m["tta"]["gain"] == pytest.approx(m["tta"]["accuracy_tta"] - m["tta"]["accuracy_plain"])

    new = tmp_path / "new"
    new.mkdir()
    make_image("circles", 4242).save(new / "a.png")
    make_image("stripes", 4243).save(new / "b.jpg")
    (new / "broken.png").write_bytes(b"not an image")
    heat = tmp_path / "heat"
    assert main(["predict", str(run_dir), str(new), "--heatmap", str(heat), "--tta"]) == 1  # broken.png: exit 1
    assert "heat maps in" in capsys.readouterr().out
    written = sorted(p.name for p in heat.iterdir())
    assert written == ["a.circles.png", "b.stripes.png"]  # the broken file gets none
    size = json.loads((run_dir / "config.json").read_text())["preprocessing"]["size"]
    with Image.open(heat / "a.circles.png") as im:
        assert im.size == (size, size)
        assert np.asarray(im).std() > 10
    assert main(["predict", str(run_dir), str(new), "--heatmap", str(heat)]) == 1
    assert len(list(heat.iterdir())) == 4  # never overwrites

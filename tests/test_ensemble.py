"""Ensembles of linear probes (``--backbone a+b``): one backbone module and one linear head whose
logits are the members' averaged logits, so saving, loading, Grad-CAM and ONNX work unchanged."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from conftest import FAST, make_image, write_class_folders
from test_train import StageRecorder

import vistrain
from vistrain.data.dataset import DataConfig
from vistrain.evaluation.gradcam import grad_cam
from vistrain.evaluation.predictor import Predictor
from vistrain.heatmap import cam_from_features
from vistrain.models import BackboneError, create_backbone, get_backbone
from vistrain.training.probe import choose_probe, fit_ensemble_probe, probe_logits
from vistrain.training.trainer import TrainConfig, TrainError

PAIR = "efficientnet_lite0+efficientnet_lite1"


@pytest.fixture(scope="module")
def ensemble_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("ensemble")
    data = base / "split"
    write_class_folders(data / "train", per_class=6)
    write_class_folders(data / "valid", per_class=3, start=50)
    (data / "test").mkdir()
    for ci, name in enumerate(("circles", "squares", "stripes")):
        make_image(name, seed=9100 + ci).save(data / "test" / f"{name}_1.jpg", quality=90)
    recorder = StageRecorder()
    run = vistrain.train(data, out=base / "run", cache_dir=base / "cache", backbone=PAIR, reporter=recorder, **FAST)
    return run, data, base / "cache", recorder


def test_an_ensemble_name_is_one_backbone_made_of_its_pretrained_members():
    spec = get_backbone(PAIR)
    assert spec.num_features == 2 * 1280 and spec.cam_layer == "fmap"
    assert spec.preprocessing(96) == get_backbone("efficientnet_lite0").preprocessing(96)
    both = create_backbone(PAIR).eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        alone = torch.cat([create_backbone(m).eval()(x) for m in PAIR.split("+")], dim=1)
        np.testing.assert_allclose(both(x).numpy(), alone.numpy(), atol=1e-5)


@pytest.mark.parametrize("name, message", [
    ("efficientnet_lite0+efficientnet_lite0", "two or more different backbones"),
    ("efficientnet_lite0+", "two or more different backbones"),
    ("efficientnet_lite0+resnet50", "unknown backbone 'resnet50'"),
])
def test_bad_ensembles_are_refused_with_the_reason(name, message):
    with pytest.raises(BackboneError, match=message):
        get_backbone(name)


def test_averaged_head_gives_the_mean_of_the_members_logits():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    f = rng.normal(size=(60, 12)).astype(np.float32) + y[:, None] * np.linspace(0, 1, 12)
    fv = rng.normal(size=(60, 12)).astype(np.float32) + y[:, None] * np.linspace(0, 1, 12)
    w, b, heads = fit_ensemble_probe(f, y, 3, [5, 7], valid=(fv, y))
    parts = [probe_logits(f[:, :5], heads[0].weight, heads[0].bias), probe_logits(f[:, 5:], heads[1].weight, heads[1].bias)]
    np.testing.assert_allclose(probe_logits(f, w, b), (parts[0] + parts[1]) / 2, atol=1e-4)
    # Each member is exactly its own single-backbone probe, its C chosen on its own columns.
    alone = choose_probe(f[:, 5:], y, fv[:, 5:], y, 3)
    assert heads[1].C == alone.C and heads[1].losses == alone.losses
    np.testing.assert_allclose(heads[1].weight.numpy(), alone.weight.numpy(), atol=1e-6)
    # A C per member is used as given (the trainer passes the single probe's when growing).
    _, _, given = fit_ensemble_probe(f, y, 3, [5, 7], valid=(fv, y), C=[0.1, None])
    assert given[0].C == 0.1 and given[0].losses == {} and given[1].C == alone.C
    with pytest.raises(ValueError, match="do not add up to 12"):
        fit_ensemble_probe(f, y, 3, [5, 5])
    with pytest.raises(ValueError, match="3 regularisation strengths for 2 members"):
        fit_ensemble_probe(f, y, 3, [5, 7], C=[0.1, 0.1, 0.1])


def test_finetuning_an_ensemble_is_refused_naming_it(tmp_path):
    with pytest.raises(TrainError, match=re.escape(PAIR) + ".*linear probes only"):
        TrainConfig(DataConfig(tmp_path), tmp_path / "run", backbone=PAIR, mode="finetune")


def test_ensemble_run_keeps_averaged_probes_and_round_trips(ensemble_run):
    run, data, _cache, recorder = ensemble_run
    assert run.result.stage == "probe" and run.result.finetune is None  # auto: probes only
    assert any("ensemble of 2 backbones" in n for n in run.result.notes)
    assert run.metrics["valid"]["accuracy"] >= 0.8
    assert recorder.stages["features"] == 2 * (18 + 9 + 3)  # each member, each image, once
    # The saved run predicts exactly like the trained model, and like the test score from features.
    loaded = Predictor.from_folder(run.path)
    assert loaded.config.backbone == PAIR
    test = sorted((data / "test").iterdir())
    logits = loaded.logits_from_paths([str(p) for p in test])[0][:, 0]
    np.testing.assert_allclose(np.sort(logits, axis=0), np.sort(run.result.test_logits, axis=0), atol=1e-3)
    labels = np.array([run.classes.index(p.name.rsplit("_", 1)[0]) for p in test])
    assert run.metrics["test"]["accuracy"] == pytest.approx(float((logits.argmax(1) == labels).mean()))


def test_members_share_the_feature_cache_with_single_backbone_runs(ensemble_run, tmp_path):
    _run, data, cache, _ = ensemble_run
    alone = StageRecorder()
    single = vistrain.train(data, out=tmp_path / "lite0", cache_dir=cache, mode="probe", reporter=alone, **FAST)
    assert not {"features", "decode"} & set(alone.stages)  # Lite0's features came from the ensemble run
    assert single.predictor.config.backbone == "efficientnet_lite0"


def test_grad_cam_of_an_ensemble_is_its_class_activation_map(ensemble_run):
    run, data, _, _ = ensemble_run
    predictor = Predictor.from_folder(run.path)
    model, prep = predictor.model, predictor.config.preprocessing
    from vistrain.data.images import load_rgb
    from vistrain.data.transforms import normalize, to_model_pixels

    px = np.stack([to_model_pixels(load_rgb(data / "valid" / k / f"{k}_50.png"), prep) for k in ("circles", "stripes")])
    with torch.no_grad():
        feats = model.backbone.forward_features(normalize(px, prep)).numpy()
    assert feats.shape[1] == 2560  # both members' last stages, side by side
    cams = grad_cam(model, PAIR, px, prep, np.array([0, 2]))
    for i, c in enumerate([0, 2]):
        np.testing.assert_allclose(cams[i], cam_from_features(feats[i], model.head.weight[c].detach().numpy()), atol=1e-4)


def test_ensemble_exports_to_onnx_and_matches_pytorch(ensemble_run, tmp_path):
    from vistrain.export import ExportConfig, export_run
    from vistrain.runtime import OnnxPredictor

    run, data, _, _ = ensemble_run
    result = export_run(run.path, ExportConfig(out=tmp_path / "export"))  # fails itself if ONNX and PyTorch differ
    # Serving an ensemble runs every member: the export says so, with the measured cost.
    cost = [n for n in result.notes if n.startswith("this model is an ensemble of 2 backbones")]
    assert len(cost) == 1 and f"{result.info.models['fp32']['latency_ms_1_thread']:.0f} ms per image" in cost[0]
    assert "--ensemble off" in cost[0]
    files = sorted((data / "test").iterdir())
    onnx_preds = OnnxPredictor.from_folder(tmp_path / "export", "fp32").predict_paths(files)
    torch_preds = Predictor.from_folder(run.path).predict_paths(files)
    for o, t in zip(onnx_preds, torch_preds):
        np.testing.assert_allclose(o.probabilities, t.probabilities, atol=1e-5)

    # int8 keeps every member's stem in float32, not only the first one's: each member reads the
    # pixels through its own first convolution, with weights of its own.
    import onnx

    from vistrain.export.quantize import float_nodes

    graph = onnx.load(str(tmp_path / "export" / "model.onnx")).graph
    by_name = {n.name: n for n in graph.node}
    made_by = {o: n for n in graph.node for o in n.output}
    kept = [by_name[name] for name in float_nodes(tmp_path / "export" / "model.onnx")]
    stems, heads = [n for n in kept if n.op_type == "Conv"], [n for n in kept if n.op_type != "Conv"]
    assert len(stems) == 2 and len({n.input[1] for n in stems}) == 2
    assert [n.op_type for n in heads] == ["Gemm"] and heads[0].output == ["logits"]
    for stem in stems:  # nothing but padding between the pixels and each stem
        tensor, seen = [stem.input[0]], []
        while tensor:
            producer = made_by.get(tensor.pop())
            if producer is not None:
                seen.append(producer.op_type)
                tensor.extend(producer.input)
        assert "Conv" not in seen, stem.name
    assert len([n for n in graph.node if n.op_type == "Conv"]) > 2 * 30


MIXED = "efficientnet_lite0+mobilenet_v2"  # mean = std = 0.5, then ImageNet's mean/std


def _normalised(px: torch.Tensor, name: str) -> torch.Tensor:
    spec = get_backbone(name)
    return (px - torch.tensor(spec.mean).view(1, 3, 1, 1)) / torch.tensor(spec.std).view(1, 3, 1, 1)


def test_a_member_normalised_its_own_way_sees_exactly_its_own_input():
    spec = get_backbone(MIXED)
    assert spec.preprocessing(96) == get_backbone("efficientnet_lite0").preprocessing(96)  # the first member's
    both = create_backbone(MIXED).eval()
    px = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        mixed = both(_normalised(px, "efficientnet_lite0")).numpy()
        lite0 = create_backbone("efficientnet_lite0").eval()(_normalised(px, "efficientnet_lite0")).numpy()
        mnv2 = create_backbone("mobilenet_v2").eval()(_normalised(px, "mobilenet_v2")).numpy()
        fmap = both.forward_features(_normalised(px, "efficientnet_lite0"))
    np.testing.assert_allclose(mixed, np.hstack([lite0, mnv2]), atol=1e-4)
    assert fmap.shape[1] == 1280 + 1280 and spec.num_features == 2560
    # The scale and shift come from the registry: the saved weights are the members' alone.
    keys = set(both.state_dict())
    assert not any(k.endswith(("scale", "shift")) for k in keys)
    assert "members.1.net.features.0.0.weight" in keys


def test_onnx_graphs_of_a_backbone_alone_and_as_a_renormalised_member_do_not_mix(tmp_path):
    from vistrain.training.features import extract_features, onnx_session

    lite_prep = get_backbone(MIXED).preprocessing(64)
    own_prep = get_backbone("mobilenet_v2").preprocessing(64)
    member = create_backbone(MIXED).members[1].eval()
    alone = create_backbone("mobilenet_v2").eval()
    pixels = np.random.default_rng(0).integers(0, 256, size=(3, 64, 64, 3), dtype=np.uint8)
    a = extract_features(alone, pixels, own_prep, session=onnx_session(alone, "mobilenet_v2", own_prep, tmp_path))
    # Same name and size, another graph: a session cached by name and size would give the wrong one.
    b = extract_features(member, pixels, lite_prep, session=onnx_session(member, "mobilenet_v2", lite_prep, tmp_path))
    assert len(list((tmp_path / "onnx").glob("mobilenet_v2-64-*.onnx"))) == 2
    np.testing.assert_allclose(a, b, atol=1e-4)  # the same pixels, the same features


def test_mixed_ensemble_trains_saves_and_exports_with_its_pixel_arithmetic_in_float(tmp_path):
    from vistrain.export import ExportConfig, export_run
    from vistrain.export.quantize import float_nodes
    from vistrain.runtime import OnnxPredictor

    data = tmp_path / "data"
    write_class_folders(data, per_class=8)
    run = vistrain.train(data, out=tmp_path / "run", cache_dir=tmp_path / "cache", backbone=MIXED, **FAST)
    assert run.result.stage == "probe" and run.predictor.config.backbone == MIXED
    files = sorted((data / "circles").iterdir())[:3] + sorted((data / "stripes").iterdir())[:3]
    saved = Predictor.from_folder(run.path).predict_paths(files)
    result = export_run(run.path, ExportConfig(out=tmp_path / "export"))  # fails itself if ONNX and PyTorch differ
    assert result.info.backbone == MIXED
    for o, t in zip(OnnxPredictor.from_folder(tmp_path / "export", "fp32").predict_paths(files), saved):
        np.testing.assert_allclose(o.probabilities, t.probabilities, atol=1e-5)
    import onnx

    graph = onnx.load(str(tmp_path / "export" / "model.onnx")).graph
    kept = {n.name: n.op_type for n in graph.node if n.name in set(float_nodes(tmp_path / "export" / "model.onnx"))}
    # Two stems, MobileNetV2's scale and shift before its stem, and the head: int8 leaves them float.
    assert sorted(kept.values()) == ["Add", "Conv", "Conv", "Gemm", "Mul"]
    card = (tmp_path / "export" / "README.md").read_text(encoding="utf-8")
    network = next(line for line in card.splitlines() if line.startswith("| Network |"))
    # MobileNetV2 sees Lite0's bicubic resize: the card says so for that member alone.
    lite, mnv2 = network.split(" + ")
    assert "resizing" not in lite and "expect bilinear resizing, it sees the input's bicubic)" in mnv2

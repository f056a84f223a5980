"""The familiarity check: photos unlike every training photo are flagged, in PyTorch, ONNX Runtime,
the CLI and the server, with a threshold set on the validation photos."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import FAST, make_image, write_labels_csv
from PIL import Image

import vistrain
from vistrain.cli import main
from vistrain.export.standalone import familiarity as standalone_familiarity
from vistrain.familiarity import FAMILIAR_FILE, Familiarity, bank_sample, normalise


def _odd_photos(folder):
    """Nothing like the coloured shapes the models here learn: noise, a blank page, a grey gradient."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / "noise.png")
    Image.new("RGB", (64, 64), (255, 255, 255)).save(folder / "blank.png")
    Image.fromarray(np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (64, 1))).save(folder / "gradient.png")
    return folder


def test_threshold_keeps_the_asked_share_of_validation_photos():
    rng = np.random.default_rng(1)
    train = rng.normal(size=(50, 8)) + 3
    valid = train[:40] + rng.normal(scale=0.3, size=(40, 8))
    f = Familiarity.fit(train, valid, [8], keep=0.9)
    sims = f.similarity(valid)
    assert f.n_valid == 40 and f.n_kept == int((sims >= f.threshold).sum()) >= 36
    assert (sims < f.threshold).sum() <= 4
    # A direction no training photo points to is unfamiliar; a training photo itself is familiar.
    assert not f.familiar(f.similarity(-train[:1]))[0] and f.familiar(f.similarity(train[:1]))[0]
    # A cosine: never above 1, though the bank is float16 (a training photo met again gave 1.0001).
    assert f.similarity(train).max() <= 1.0 and f.similarity(train).min() > 0.999


def test_threshold_sits_halfway_between_kept_and_flagged_photos():
    sims = np.array([0.9, 0.2, 0.8, 0.5, 0.7, 0.6, 0.85, 0.75, 0.65, 0.95])
    t = Familiarity.threshold_for(sims, keep=0.7)  # numpy's lower 30% quantile: 0.2 and 0.5 flagged
    assert t == pytest.approx((0.5 + 0.6) / 2)
    # No photo sits on it, so float noise cannot move any across it.
    assert np.abs(sims - t).min() == pytest.approx(0.05)
    # Keeping all: just below the least similar, by far more than float noise and less than any real gap.
    t = Familiarity.threshold_for(sims, keep=1.0)
    assert 0.2 - 1e-3 < t < 0.2 - 1e-5


def test_ensemble_blocks_weigh_members_equally():
    a = np.array([[1.0, 0.0, 1.0, 0.0, 0.0]])
    b = np.array([[1.0, 0.0, 0.0, 0.0, 0.0]])
    b[0, 2:] = [0.0, 100.0, 0.0]  # the second member's block is long: it must not dominate
    sim = float((normalise(a, [2, 3]) @ normalise(b, [2, 3]).T)[0, 0])
    assert sim == pytest.approx(0.5)  # member 1 identical (1), member 2 unrelated (0): their mean


def test_bank_sample_keeps_every_class_in_proportion():
    labels = np.array([0] * 900 + [1] * 90 + [2] * 10)
    idx = bank_sample(labels, limit=100, seed=0)
    counts = np.bincount(labels[idx], minlength=3)
    assert counts.sum() <= 101 and list(counts) == [90, 9, 1]
    assert list(bank_sample(labels[:50], limit=100)) == list(range(50))  # small sets: all of them


def test_save_and_load_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    f = Familiarity.fit(rng.normal(size=(20, 6)), rng.normal(size=(10, 6)), [4, 2])
    f.save(tmp_path)
    g = Familiarity.load(tmp_path)
    assert (g.threshold, g.blocks, g.n_valid, g.n_kept) == (f.threshold, [4, 2], 10, f.n_kept)
    np.testing.assert_array_equal(g.bank, f.bank)
    assert Familiarity.load(tmp_path / "nothing") is None


def test_the_same_check_saved_by_two_processes_is_the_same_file(tmp_path):
    # safetensors' own writer orders metadata by a per-process hash map: the bytes changed from run to run.
    script = ("import sys, numpy as np; from vistrain.familiarity import Familiarity; "
              "r = np.random.default_rng(3); "
              "Familiarity.fit(r.normal(size=(20, 6)), r.normal(size=(10, 6)), [4, 2]).save(sys.argv[1])")
    files = []
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
        subprocess.run([sys.executable, "-c", script, str(tmp_path / name)], check=True)
        files.append((tmp_path / name / FAMILIAR_FILE).read_bytes())
    assert files[0] == files[1] == files[2]
    n = int.from_bytes(files[0][:8], "little")
    header = json.loads(files[0][8 : 8 + n])
    assert list(header["__metadata__"]) == sorted(header["__metadata__"]) and (8 + n) % 8 == 0
    bank, blocks, _ = standalone_familiarity(tmp_path / "a", 0.5)
    np.testing.assert_array_equal(bank, Familiarity.load(tmp_path / "a").bank)
    assert list(blocks) == [4, 2]


def test_probe_run_flags_odd_photos_in_predict_csv_and_into(trained_run, tmp_path, capsys):
    run, _data = trained_run
    info = json.loads((run / "config.json").read_text())["familiarity"]
    assert (run / FAMILIAR_FILE).is_file() and info["n_valid_familiar"] >= info["n_valid"] - 1
    odd = _odd_photos(tmp_path / "odd")
    for i, kind in enumerate(["circles", "squares", "stripes"]):
        make_image(kind, 7000 + i).save(odd / f"new_{kind}.png")  # new photos like the training ones
    assert main(["predict", str(run), str(odd), "--csv", str(tmp_path / "p.csv"), "--into", str(tmp_path / "sorted"),
                 "--unsure", "0"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "3 unlike the training photos" in out and "(unfamiliar)" in out
    with (tmp_path / "p.csv").open() as f:
        rows = {r["path"].split("/")[-1]: r for r in csv.DictReader(f)}
    assert {n for n, r in rows.items() if r["familiar"] == "false"} == {"noise.png", "blank.png", "gradient.png"}
    assert all(float(rows[n]["similarity"]) < float(rows["new_circles.png"]["similarity"])
               for n in ("noise.png", "blank.png", "gradient.png"))
    assert sorted(p.name for p in (tmp_path / "sorted" / "unfamiliar").iterdir()) == \
        ["blank.png", "gradient.png", "noise.png"]
    assert (tmp_path / "sorted" / "circles" / "new_circles.png").is_file()


def test_evaluate_counts_unfamiliar_images_and_scores_them_apart(trained_run, tmp_path, capsys):
    run, _data = trained_run
    odd = _odd_photos(tmp_path / "odd")
    rows = [(str(p), "circles") for p in sorted(odd.iterdir())]
    for i, kind in enumerate(["circles", "squares", "stripes"]):
        make_image(kind, 7200 + i).save(odd / f"new_{kind}.png")
        rows.append((str(odd / f"new_{kind}.png"), kind))
    labels = write_labels_csv(tmp_path / "labels.csv", rows)
    assert main(["evaluate", str(run), str(labels), "--json"]) == 0
    u = json.loads(capsys.readouterr().out)["unfamiliar"]
    assert u["n"] == 3 and u["accuracy_familiar"] == 1.0
    assert main(["evaluate", str(run), str(labels)]) == 0
    assert "3 of these 6 images are unlike every training photo" in " ".join(capsys.readouterr().out.split())
    # The report says the same, on the console and on the page (it writes into the run: a copy).
    shutil.copytree(run, tmp_path / "run")
    assert main(["report", str(tmp_path / "run"), str(labels)]) == 0
    assert "3 of these 6 images are unlike every training photo" in " ".join(capsys.readouterr().out.split())
    assert 'class="warn">3 of these 6 images are unlike every training photo' in \
        (tmp_path / "run" / "report.html").read_text()


def test_fine_tuned_run_judges_by_its_own_features(split_folders, tmp_path, cache_dir):
    run = vistrain.train(split_folders, out=tmp_path / "ft", cache_dir=cache_dir, mode="finetune", epochs=1,
                         batch_size=8, **FAST)
    assert run.result.stage == "finetune"
    train_image = min((split_folders / "train" / "circles").iterdir())
    # The bank holds the fine-tuned network's features of the training photos: a training photo
    # is its own nearest neighbour. Frozen features in the bank would not match the model's.
    (p,) = vistrain.load(tmp_path / "ft").predictor.predict_paths([train_image])
    assert p.similarity == pytest.approx(1.0, abs=2e-3) and p.familiar


def test_onnx_export_and_server_agree_with_pytorch(trained_run, exported_run, tmp_path):
    from fastapi.testclient import TestClient

    from vistrain.runtime import OnnxPredictor
    from vistrain.serve import ServeConfig, create_app

    run, _data = trained_run
    odd = _odd_photos(tmp_path / "odd")
    make_image("squares", 7100).save(odd / "square.png")
    paths = sorted(odd.iterdir())
    torch_preds = vistrain.load(run).predictor.predict_paths(paths)
    onnx_preds = OnnxPredictor.from_folder(exported_run, variant="fp32").predict_paths(paths)
    for t, o in zip(torch_preds, onnx_preds):
        assert o.similarity == pytest.approx(t.similarity, abs=5e-3) and o.familiar == t.familiar
    assert [t.familiar for t in torch_preds] == [False, False, False, True]  # blank, gradient, noise, square
    info = json.loads((exported_run / "export.json").read_text())
    assert all("familiar_threshold" in m for m in info["models"].values())

    with TestClient(create_app(ServeConfig(exported_run))) as client:
        files = []
        for p in paths:
            buf = io.BytesIO(p.read_bytes())
            files.append(("file", (p.name, buf, "image/png")))
        preds = client.post("/predict", files=files[:4]).json()["predictions"]
        assert [q["familiar"] for q in preds] == [False, False, False, True]
        assert client.get("/model").json()["familiar_threshold"] is not None


def test_into_flag_folders_never_merge_with_a_class_of_the_same_name(tmp_path):
    from vistrain.api import sort_into

    photo = tmp_path / "a.png"
    make_image("circles", 1).save(photo)
    rows = [{"path": str(photo), "label": "unsure", "unsure": False, "familiar": True},  # a class named unsure
            {"path": str(photo), "label": "dogs", "unsure": True, "familiar": True},
            {"path": str(photo), "label": "dogs", "unsure": False, "familiar": False}]
    written = sort_into(rows, tmp_path / "sorted", ["dogs", "unfamiliar", "unsure"])
    assert [p.parent.name for p in written] == ["unsure", "unsure (vistrain)", "unfamiliar (vistrain)"]
    # Without such classes the flags keep their plain names.
    written = sort_into(rows[1:], tmp_path / "plain", ["cats", "dogs"])
    assert [p.parent.name for p in written] == ["unsure", "unfamiliar"]

"""`vistrain predict` and `vistrain evaluate` on an export folder: ONNX Runtime, no PyTorch needed,
the same rows, CSV, --into folders and metrics as a run folder gives."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from vistrain.cli import main
from vistrain.runtime import OnnxPredictor

# The CLI as a serving install (the `serve` extra, see Dockerfile) runs it: nothing it lacks can be imported.
_NO_TORCH = ("import sys\n"
             "for name in ('torch', 'torchvision', 'timm', 'sklearn', 'scipy', 'matplotlib', 'onnx'):\n"
             "    sys.modules[name] = None\n"
             "from vistrain.cli import main\n"
             "sys.exit(main(sys.argv[1:]))")


def _cli_without_torch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _NO_TORCH, *args], check=False, capture_output=True, text=True,
                          timeout=300)


def test_predict_an_export_folder_without_pytorch(exported_run, trained_run, tmp_path):
    _, data = trained_run
    out_csv, into = tmp_path / "preds.csv", tmp_path / "sorted"
    done = _cli_without_torch("predict", str(exported_run), str(data), "--csv", str(out_csv), "--into", str(into))
    assert done.returncode == 0, done.stderr + done.stdout
    rows = list(csv.DictReader(out_csv.open()))
    photos = sorted(data.rglob("*.png"))
    assert sorted(Path(r["path"]) for r in rows) == photos
    predictor = OnnxPredictor.from_folder(exported_run)  # the export's default file: int8
    want = {Path(p.path): p for p in predictor.predict_paths(photos)}
    for r in rows:
        p = want[Path(r["path"])]
        best = int(p.probabilities.argmax())
        assert r["label"] == predictor.classes[best]
        assert abs(float(r["probability"]) - p.probabilities[best]) < 1e-5
        assert r["unsure"] == str(bool(p.probabilities[best] < predictor.unsure_threshold)).lower()
        assert r["familiar"] == str(p.familiar).lower()
        flag = "unfamiliar" if not p.familiar else "unsure" if r["unsure"] == "true" else r["label"]
        assert (into / flag / Path(r["path"]).name).is_file()  # copied where the answer says
    assert all(p.is_file() for p in photos)  # copies, never moves


def test_evaluate_an_export_folder_without_pytorch_knows_its_training_photos(exported_run, trained_run):
    run, data = trained_run
    done = _cli_without_torch("evaluate", str(exported_run), str(data), "--json", "--variant", "fp32")
    assert done.returncode == 0, done.stderr
    m = json.loads(done.stdout)
    predictor = OnnxPredictor.from_folder(exported_run, "fp32")
    photos = sorted(data.rglob("*.png"))
    y_pred = [predictor.classes[int(p.probabilities.argmax())] for p in predictor.predict_paths(photos)]
    y_true = [p.parent.name for p in photos]
    assert m["n"] == len(photos)
    assert abs(m["accuracy"] - np.mean([a == b for a, b in zip(y_true, y_pred)])) < 1e-9
    assert m["model"]["variant"] == "fp32" and m["model"]["source_run"] == str(run.resolve())
    # These are the run's own photos: the export finds its run's split.csv and says so.
    overlap = m["overlap_with_run"]
    assert overlap["train"] + overlap["valid"] == len(photos) and overlap["new"] == 0


def test_a_serving_install_runs_a_runs_export(exported_run, trained_run, tmp_path):
    run, data = trained_run
    copy = shutil.copytree(run, tmp_path / "run")
    shutil.copytree(exported_run, copy / "export")
    photo = next(data.rglob("*.png"))
    done = _cli_without_torch("predict", str(copy), str(photo), "--json")
    assert done.returncode == 0, done.stderr
    assert "PyTorch is not installed: running" in done.stderr + done.stdout
    (row,) = json.loads(done.stdout)
    assert row["label"] in json.loads((exported_run / "export.json").read_text())["classes"]


def _said(capsys) -> str:
    return " ".join(capsys.readouterr().out.split())  # rich folds long lines


def test_mirror_tta_on_an_export_is_the_runs(exported_run, trained_run):
    from vistrain.evaluation.predictor import Predictor

    run, data = trained_run
    photos = sorted(data.rglob("*.png"))
    onnx = OnnxPredictor.from_folder(exported_run, "fp32")
    both = np.stack([p.probabilities for p in onnx.predict_paths(photos, tta=True)])
    torch_both = np.stack([p.probabilities for p in Predictor.from_folder(run).predict_paths(photos, tta=True)])
    np.testing.assert_allclose(both, torch_both, atol=1e-4)
    plain = np.stack([p.probabilities for p in onnx.predict_paths(photos)])
    assert np.abs(both - plain).max() > 1e-3  # the mirror image really went in
    done = _cli_without_torch("evaluate", str(exported_run), str(data), "--json", "--variant", "fp32", "--tta")
    assert done.returncode == 0, done.stderr
    m = json.loads(done.stdout)
    y_true = np.array([onnx.classes.index(p.parent.name) for p in photos])
    t = m["tta"]
    assert t["accuracy_tta"] == m["accuracy"] == np.mean(both.argmax(1) == y_true)
    assert t["accuracy_plain"] == np.mean(plain.argmax(1) == y_true)
    assert t["gain"] == t["accuracy_tta"] - t["accuracy_plain"]


def test_what_only_pytorch_serves_is_refused_by_name(exported_run, trained_run, capsys):
    run, data = trained_run
    assert main(["evaluate", str(exported_run), str(data), "--device", "cuda"]) == 2
    assert "runs on the CPU" in _said(capsys)
    assert main(["predict", str(run), str(data), "--variant", "int8"]) == 2
    assert "is for export folders" in _said(capsys)


def test_heat_maps_from_an_export_are_the_runs_grad_cam(exported_run, trained_run, tmp_path):
    run, data = trained_run
    photos = sorted(data.rglob("*.png"))[::5]
    done = _cli_without_torch("predict", str(exported_run), *map(str, photos), "--variant", "fp32",
                              "--heatmap", str(tmp_path / "onnx"), "--json")
    assert done.returncode == 0, done.stderr
    assert main(["predict", str(run), *map(str, photos), "--heatmap", str(tmp_path / "torch"), "--json"]) == 0
    onnx_maps = sorted(p.name for p in (tmp_path / "onnx").iterdir())
    assert onnx_maps == sorted(p.name for p in (tmp_path / "torch").iterdir())
    assert len(onnx_maps) == len(photos)  # one per answer, named <photo>.<answer>.png
    for name in onnx_maps:
        a = np.asarray(Image.open(tmp_path / "onnx" / name), dtype=float)
        b = np.asarray(Image.open(tmp_path / "torch" / name), dtype=float)
        assert np.abs(a - b).mean() < 1.0, name  # of 255: the same map, up to float rounding


def test_predict_on_a_run_points_to_its_current_export(trained_run, tmp_path, capsys):
    """PyTorch on a run folder is the slow way to predict: once the run holds an export of its
    current model, predict says so (and never switches by itself); an export of an earlier state
    of the run gets no such pointer."""
    from vistrain.export import export_run

    run = tmp_path / "run"
    shutil.copytree(trained_run[0], run)
    photo = min(trained_run[1].rglob("*.png"))

    def predict(folder: Path) -> tuple[str, dict]:
        assert main(["predict", str(folder), str(photo), "--json"]) == 0
        out, err = capsys.readouterr()
        return " ".join(err.split()), json.loads(out)[0]

    said, _ = predict(run)
    assert "tip:" not in said
    export_run(run)
    said, by_torch = predict(run)
    assert f"tip: {run / 'export'} is an ONNX export of this model; `vistrain predict {run / 'export'} …`" in said
    _, by_onnx = predict(run / "export")  # the command the tip gives: the same answer
    assert (by_onnx["label"], by_onnx["unsure"]) == (by_torch["label"], by_torch["unsure"])
    assert abs(by_onnx["probability"] - by_torch["probability"]) < 1e-5
    cfg = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg, "unsure_threshold": 0.42}))  # as `report` refits it
    said, _ = predict(run)
    assert "tip:" not in said

"""``train --mlflow DIR``: params, per-epoch metrics, report and model logged to a real local MLflow store."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from conftest import write_class_folders

from vistrain.cli import main

mlflow = pytest.importorskip("mlflow", reason="MLflow not installed: pip install -e '.[tracking]'")


def test_train_logs_params_epochs_report_and_model(tmp_path, cache_dir):
    data = write_class_folders(tmp_path / "photos", per_class=6)
    run, store = tmp_path / "run", tmp_path / "mlruns"
    assert main(["train", str(data), "--out", str(run), "--cache-dir", str(cache_dir), "--mode", "finetune",
                 "--epochs", "2", "--batch-size", "6", "--image-size", "64", "--no-time-budget",
                 "--schedule", "exp-decay", "--mlflow", str(store)]) == 0
    assert (store / "mlflow.db").exists()
    client = mlflow.tracking.MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    exp = client.get_experiment_by_name("vistrain")
    (logged,) = client.search_runs([exp.experiment_id])
    assert logged.info.status == "FINISHED"
    assert logged.data.params["schedule"] == "exp-decay" and logged.data.params["backbone"] == "efficientnet_lite0"
    assert logged.data.params["augment.jitter"] == "0.2"
    metrics = json.loads((run / "metrics.json").read_text())
    assert logged.data.metrics["valid_accuracy"] == pytest.approx(metrics["valid"]["accuracy"])
    with (run / "history.csv").open() as f:
        losses = [float(r["valid_loss"]) for r in csv.DictReader(f)]
    history = client.get_metric_history(logged.info.run_id, "valid_loss")
    assert [h.step for h in history] == [1, 2]
    assert [h.value for h in history] == pytest.approx(losses)
    report = {a.path for a in client.list_artifacts(logged.info.run_id, "report")}
    model = {a.path for a in client.list_artifacts(logged.info.run_id, "model")}
    assert {"report/metrics.json", "report/history.csv", "report/train_config.yaml"} <= report
    assert model == {"model/model.safetensors", "model/config.json", "model/familiar.safetensors"}
    local = client.download_artifacts(logged.info.run_id, "model/model.safetensors", str(tmp_path / "dl"))
    assert Path(local).read_bytes() == (run / "model.safetensors").read_bytes()


def test_mlflow_missing_is_refused_before_training(tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    data = write_class_folders(tmp_path / "photos", per_class=6)
    assert main(["train", str(data), "--out", str(tmp_path / "run"), "--mlflow", str(tmp_path / "mlruns")]) == 2
    out = " ".join(capsys.readouterr().out.split())
    assert "--mlflow needs MLflow" in out and "pip install -e '.[tracking]'" in out
    assert not (tmp_path / "run").exists()  # nothing trained: the refusal came first

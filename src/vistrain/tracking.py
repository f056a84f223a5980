"""Optional MLflow logging of a finished run. The run folder stays the source of truth: this reads it
(train_config.yaml, history.csv, metrics.json) and copies the report and the model as artifacts.

``--mlflow`` alone logs to ``./mlruns`` (a SQLite store, ``mlruns/mlflow.db``, with artifacts in
``mlruns/artifacts``: MLflow no longer develops its plain-file store); ``--mlflow DIR`` does the same
in DIR, and ``--mlflow URI`` (``http://host:5000``, ``sqlite:///...``, ``postgresql://...``) uses that server or store.
"""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import yaml

from vistrain.extras import EXTRA_HINT

REPORT_FILES = ("metrics.json", "history.csv", "config.json", "train_config.yaml", "data_report.json", "split.csv",
                "report.html")
MODEL_FILES = ("model.safetensors", "config.json", "familiar.safetensors")  # what vistrain.load reads


class TrackingError(ValueError):
    """MLflow is missing or its store cannot be used; the message says which and how to fix it."""


def store_uri(target: str) -> tuple[str, str | None]:
    """(tracking URI, artifact location for a new experiment or None for the store's default)."""
    if "://" in target:
        return target, None
    folder = Path(target).expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}", str(folder / "artifacts")


def _flat(d: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = str(v)
    return out


def require_mlflow() -> None:
    """Refuse --mlflow before training when MLflow is missing, not after the run it was to log."""
    if importlib.util.find_spec("mlflow") is None:
        raise TrackingError(f"--mlflow needs MLflow (mlflow-skinny), which is not installed: {EXTRA_HINT.format('tracking')}")


def log_run(run_dir: Path | str, target: str = "mlruns", experiment: str = "vistrain") -> str:
    """Log a finished run folder to MLflow; returns the MLflow run id."""
    require_mlflow()
    from mlflow.tracking import MlflowClient

    run_dir = Path(run_dir)
    metrics_file = run_dir / "metrics.json"
    if not metrics_file.exists():
        raise TrackingError(f"{run_dir}: not a finished run (no metrics.json)")
    uri, artifacts = store_uri(target)
    client = MlflowClient(tracking_uri=uri)
    try:
        exp = client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp else client.create_experiment(experiment, artifact_location=artifacts)
    except Exception as exc:  # noqa: BLE001 - the store's own errors (unreachable server, bad URI) vary by backend
        raise TrackingError(f"MLflow store {uri}: {str(exc).splitlines()[0]}") from None
    run = client.create_run(exp_id, run_name=run_dir.resolve().name, tags={"vistrain.run_dir": str(run_dir.resolve())})
    rid = run.info.run_id
    try:
        cfg_file = run_dir / "train_config.yaml"
        params = _flat(yaml.safe_load(cfg_file.read_text()) or {}) if cfg_file.exists() else {}
        for k, v in params.items():
            client.log_param(rid, k, v[:6000])
        history = run_dir / "history.csv"
        if history.exists():
            with history.open() as f:
                for row in csv.DictReader(f):
                    step = int(row.pop("epoch"))
                    for k, v in row.items():
                        if v not in ("", None):
                            client.log_metric(rid, k, float(v), step=step)
        m = json.loads(metrics_file.read_text())
        for split in ("valid", "test"):
            if split in m:
                client.log_metric(rid, f"{split}_accuracy", m[split]["accuracy"])
                client.log_metric(rid, f"{split}_macro_f1", m[split]["macro_avg"]["f1"])
        client.set_tag(rid, "vistrain.stage", str(m.get("stage")))
        for name in REPORT_FILES:
            if (run_dir / name).exists():
                client.log_artifact(rid, str(run_dir / name), artifact_path="report")
        for name in MODEL_FILES:
            if (run_dir / name).exists():
                client.log_artifact(rid, str(run_dir / name), artifact_path="model")
    except BaseException:
        client.set_terminated(rid, status="FAILED")
        raise
    client.set_terminated(rid)
    return rid

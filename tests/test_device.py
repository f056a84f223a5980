"""``--device auto|cpu|cuda``: resolution, clear refusals, the device recorded in the run; the CUDA
path (mixed precision, weights that load on the CPU) where PyTorch sees a GPU."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from conftest import FAST
from safetensors import safe_open

import vistrain
from vistrain.cli import build_parser, main
from vistrain.config_file import load_config, resolve_train_args
from vistrain.training.device import DEVICES, resolve_device
from vistrain.training.trainer import TrainError

NO_CUDA = not torch.cuda.is_available()


def test_auto_and_cpu_resolve():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cpu" if NO_CUDA else "cuda")
    assert DEVICES == ("auto", "cpu", "cuda")


def test_unknown_device_lists_the_choices(class_folders, trained_run, tmp_path, capsys):
    with pytest.raises(ValueError, match=r"device 'gpu' is not one of auto, cpu, cuda"):
        resolve_device("gpu")
    with pytest.raises(TrainError, match=r"device 'gpu' is not one of auto, cpu, cuda"):
        vistrain.train(class_folders, out=tmp_path / "r", device="gpu", **FAST)
    assert main(["train", str(class_folders), "--out", str(tmp_path / "r"), "--device", "gpu"]) == 2
    assert "device 'gpu' is not one of auto, cpu, cuda" in capsys.readouterr().out.replace("\n", "")
    assert not (tmp_path / "r").exists()  # refused before anything is written
    run, data = trained_run
    assert main(["predict", str(run), str(data / "circles"), "--device", "tpu"]) == 2
    assert "device 'tpu' is not one of auto, cpu, cuda" in capsys.readouterr().out.replace("\n", "")


@pytest.mark.skipif(not NO_CUDA, reason="PyTorch sees a CUDA device here")
def test_cuda_without_a_gpu_is_a_clear_error(class_folders, trained_run, tmp_path, capsys):
    message = r"--device cuda: no CUDA device is visible to PyTorch \(torch.cuda.is_available\(\) is False\)"
    with pytest.raises(ValueError, match=message):
        resolve_device("cuda")
    with pytest.raises(TrainError, match=message):
        vistrain.train(class_folders, out=tmp_path / "r", device="cuda", **FAST)
    assert main(["train", str(class_folders), "--out", str(tmp_path / "r"), "--device", "cuda"]) == 2
    assert "use --device cpu or --device auto" in capsys.readouterr().out.replace("\n", "")
    assert not (tmp_path / "r").exists()  # refused before anything is written
    run, data = trained_run
    assert main(["predict", str(run), str(data / "circles"), "--device", "cuda"]) == 2
    assert "no CUDA device is visible" in capsys.readouterr().out.replace("\n", "")


def test_torchrun_processes_share_gpus_or_all_stay_on_the_cpu(monkeypatch):
    """Every process decides alike: with fewer GPUs than local processes, auto means the CPU (gloo)."""
    n = torch.cuda.device_count() if not NO_CUDA else 0
    monkeypatch.setenv("WORLD_SIZE", str(n + 1))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(n + 1))
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="--device cuda"):
        resolve_device("cuda")
    if n:  # one process per GPU: each takes cuda:LOCAL_RANK
        monkeypatch.setenv("WORLD_SIZE", str(n))
        monkeypatch.setenv("LOCAL_WORLD_SIZE", str(n))
        monkeypatch.setenv("LOCAL_RANK", str(n - 1))
        assert resolve_device("auto") == torch.device("cuda", n - 1)


def test_yaml_config_and_sweep_space_accept_device(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("data: photos\ndevice: cpu\n")
    (tmp_path / "photos").mkdir()  # a config file's data folder must exist (relative to the file)
    assert load_config(f)["device"] == "cpu"
    args, extra = resolve_train_args(build_parser().parse_args(["train", "--config", str(f)]))
    assert args.device == "cpu" and "device" not in extra
    args, _ = resolve_train_args(build_parser().parse_args(["train", "--config", str(f), "--device", "auto"]))
    assert args.device == "auto"  # typed flags win over the file
    args, _ = resolve_train_args(build_parser().parse_args(["train", "photos"]))
    assert args.device == "auto"

    from vistrain.sweep.space import load_space

    space = tmp_path / "space.yaml"
    space.write_text("device: cpu\nlr: {low: 1.0e-5, high: 1.0e-3, log: true}\n")
    assert load_space(space)["device"].value == "cpu"


def test_cli_train_on_cpu_records_the_device(class_folders, tmp_path, cache_dir, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"device": "cpu", "mode": "probe", "image_size": 64, "time_budget": None}))
    run = tmp_path / "run"
    assert main(["train", str(class_folders), "--config", str(cfg), "--out", str(run),
                 "--cache-dir", str(cache_dir)]) == 0
    assert "on cpu. Kept" in " ".join(capsys.readouterr().out.split())
    training = json.loads((run / "config.json").read_text())["training"]
    assert (training["device"], training["device_requested"], training["amp"]) == ("cpu", "cpu", False)
    metrics = json.loads((run / "metrics.json").read_text())
    assert (metrics["device"], metrics["amp"]) == ("cpu", False)
    assert yaml.safe_load((run / "train_config.yaml").read_text())["device"] == "cpu"  # the request, reusable
    # The flag, typed, wins over the file's value (the same request here) and inference takes it too.
    assert main(["predict", str(run), str(class_folders / "circles"), "--device", "cpu", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 8 and all(r["error"] is None for r in rows)


@pytest.mark.skipif(NO_CUDA, reason="needs a CUDA device visible to PyTorch")
def test_cuda_training_with_mixed_precision_loads_and_predicts_on_the_cpu(split_folders, tmp_path, cache_dir, capsys):
    out = tmp_path / "gpu"
    run = vistrain.train(split_folders, out=out, cache_dir=cache_dir, mode="finetune", epochs=2, batch_size=8,
                         device="cuda", **FAST)
    assert run.result.device.startswith("cuda") and run.result.amp
    assert run.predictor.device.type == "cuda"
    assert [h.epoch for h in run.result.finetune.history] == [1, 2]
    assert all(np.isfinite(h.train_loss) for h in run.result.finetune.history)
    training = json.loads((out / "config.json").read_text())["training"]
    assert training["device"].startswith("cuda") and training["amp"] is True and training["device_requested"] == "cuda"
    with safe_open(str(out / "model.safetensors"), "pt") as f:  # saved from CPU tensors, loads without a GPU
        assert all(f.get_tensor(k).device.type == "cpu" for k in f.keys())  # noqa: SIM118 (safe_open is not a dict)

    cpu = vistrain.load(out, device="cpu")
    assert cpu.predictor.device.type == "cpu"
    images = sorted((split_folders / "valid").rglob("*.png"))
    a = np.stack([p.probabilities for p in run.predictor.predict_paths(images)])
    b = np.stack([p.probabilities for p in cpu.predictor.predict_paths(images)])
    assert (a.argmax(1) == b.argmax(1)).all()
    np.testing.assert_allclose(a, b, atol=2e-3)  # float32 on both; cuDNN's TF32 convolutions differ slightly

    # Inference commands on the GPU too, Grad-CAM heat maps included.
    assert main(["predict", str(out), str(split_folders / "valid" / "circles"), "--device", "cuda",
                 "--heatmap", str(tmp_path / "heat"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 3 and all(r["error"] is None for r in rows)
    assert len(list((tmp_path / "heat").glob("*.png"))) == 3


def test_batch_workers_and_activation_budget_by_device(monkeypatch):
    from vistrain.training.device import batch_workers, gpu_activation_budget

    assert batch_workers(torch.device("cpu")) == 1  # the step already uses every core
    assert gpu_activation_budget(torch.device("cpu")) is None  # the host budget applies
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert batch_workers(torch.device("cuda", 0)) == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # four torchrun processes share the cores
    assert batch_workers(torch.device("cuda", 0)) == 3
    if not NO_CUDA:
        _free, total = torch.cuda.mem_get_info(0)
        assert 0 < gpu_activation_budget(torch.device("cuda", 0)) <= total / 2

"""``torchrun --nproc_per_node 2 -m vistrain train``: two CPU processes (gloo on loopback), one run folder;
NCCL where PyTorch sees GPUs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import vistrain
from vistrain.cli import main

# --device cpu: this test is about gloo; on a machine with two GPUs, auto would choose NCCL.
ARGS = ["--mode", "finetune", "--epochs", "2", "--batch-size", "4", "--image-size", "64", "--no-time-budget",
        "--device", "cpu"]


def test_two_process_training_matches_a_single_process_run(split_folders, tmp_path, cache_dir):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip(f"{torchrun} missing")
    single = tmp_path / "single"
    assert main(["train", str(split_folders), "--out", str(single), "--cache-dir", str(cache_dir), *ARGS]) == 0
    ddp = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VISTRAIN_CACHE_DIR": str(cache_dir)}
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "vistrain", "train",
                           str(split_folders), "--out", str(ddp), "--cache-dir", str(cache_dir), *ARGS],
                          env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    m_ddp = json.loads((ddp / "metrics.json").read_text())
    m_one = json.loads((single / "metrics.json").read_text())
    assert any("data-parallel fine-tuning over 2 processes (gloo)" in n for n in m_ddp["notes"])
    assert m_ddp["valid"]["classes"] == m_one["valid"]["classes"]
    assert abs(m_ddp["valid"]["accuracy"] - m_one["valid"]["accuracy"]) <= 2 / 9 + 1e-9
    history = (ddp / "history.csv").read_text().splitlines()
    assert len(history) == 3  # header + the 2 planned epochs, written once by rank 0
    assert not (ddp / "checkpoint").exists()
    assert proc.stdout.count("Done in") == 1, proc.stdout[-3000:]  # one summary: rank 0's
    # Rank 0's files form a normal run: it loads and predicts.
    run = vistrain.load(ddp)
    assert run.classes == m_one["valid"]["classes"]
    rows = run.predict(split_folders / "valid" / "circles")
    assert len(rows) == 3 and all(r["error"] is None for r in rows)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device visible to PyTorch")
def test_nccl_on_gpus(split_folders, tmp_path, cache_dir):
    """Two GPUs: two torchrun processes with NCCL. One GPU cannot hold two NCCL ranks, so there a
    process group of one runs vistrain's collectives (epoch planning, stop decisions) through NCCL."""
    out = tmp_path / "nccl"
    env = {**os.environ, "VISTRAIN_CACHE_DIR": str(cache_dir)}
    if torch.cuda.device_count() >= 2:
        torchrun = Path(sys.executable).with_name("torchrun")
        proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "vistrain", "train",
                               str(split_folders), "--out", str(out), *ARGS[:-1], "cuda"],
                              env=env, capture_output=True, text=True, timeout=600, check=False)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        notes = json.loads((out / "metrics.json").read_text())["notes"]
        assert any("over 2 processes (nccl)" in n for n in notes), notes
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = textwrap.dedent(f"""
        import os, torch, torch.distributed as dist
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="{port}")
        torch.cuda.set_device(0)
        dist.init_process_group("nccl", rank=0, world_size=1)
        import vistrain
        from vistrain.training import distributed
        run = vistrain.train({str(split_folders)!r}, out={str(out)!r}, mode="finetune", epochs=2, batch_size=4,
                             image_size=64, time_budget=300, device="cuda")
        print("RESULT", dist.get_backend(), distributed._comm_device(), run.result.device,
              len(run.result.finetune.history))
        dist.destroy_process_group()
    """)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600,
                          check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "RESULT nccl cuda:0 cuda:0 2" in proc.stdout, proc.stdout[-3000:]

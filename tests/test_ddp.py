"""``torchrun --nproc_per_node 2 -m vistrain train``: two CPU processes (gloo on loopback), one run folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import vistrain
from vistrain.cli import main

ARGS = ["--mode", "finetune", "--epochs", "2", "--batch-size", "4", "--image-size", "64", "--no-time-budget"]


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

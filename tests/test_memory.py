"""Batch sizes chosen for memory: inference batches sized to an activation budget, training batches
shrunk only when the machine's free memory cannot hold them, and results that do not depend on it."""

from __future__ import annotations

import gc
import sys

import numpy as np
import pytest

from vistrain.data.transforms import Preprocessing
from vistrain.memory import (
    INFERENCE_BYTES_PER_PIXEL,
    TRAINING_BYTES_PER_PIXEL,
    TRAINING_MARGIN_BYTES,
    available_memory_bytes,
    inference_batch_size,
    process_rss_bytes,
    release_freed_memory,
    training_budget_bytes,
    training_micro_batch,
)


def test_inference_batch_shrinks_with_image_size_and_stays_in_budget():
    sizes = [64, 128, 224, 352, 512, 1024]
    batches = [inference_batch_size(s) for s in sizes]
    assert batches == sorted(batches, reverse=True)
    assert batches[0] == 32  # small inputs: capped
    assert inference_batch_size(352) == 9 and inference_batch_size(224) == 23
    for s, b in zip(sizes, batches):
        assert b >= 1
        assert b == 1 or b * INFERENCE_BYTES_PER_PIXEL * s * s <= 512e6
    assert inference_batch_size(1024, budget_bytes=1.0) == 1  # never zero


def test_micro_batch_is_the_whole_batch_when_memory_is_plentiful_or_unknown():
    assert training_micro_batch(32, 282, budget_bytes=64e9) == 32
    assert training_micro_batch(32, 282, budget_bytes=None) == 32


def test_micro_batch_splits_into_the_fewest_equal_passes_that_fit():
    per_image = TRAINING_BYTES_PER_PIXEL * 282 * 282
    assert training_micro_batch(32, 282, budget_bytes=16.5 * per_image) == 16  # two passes
    assert training_micro_batch(32, 282, budget_bytes=12 * per_image) == 11  # three: 11 + 11 + 10
    assert training_micro_batch(32, 282, budget_bytes=-1.0) == 1  # a cap below what is held: one at a time


def test_training_budget_follows_the_cap_or_the_free_memory():
    held = process_rss_bytes()
    assert held is not None and held > 10**7
    budget = training_budget_bytes(4.0)
    assert 4e9 - held - 0.3e9 < budget < 4e9 - TRAINING_MARGIN_BYTES - held + 0.1e9
    free = available_memory_bytes()
    assert training_budget_bytes(None) == (free / 2 if free is not None else None)


def test_available_memory_is_read_from_the_system():
    avail = available_memory_bytes()
    assert avail is None or 10**7 < avail < 2**50


def test_features_do_not_depend_on_the_inference_batch():
    import torch

    from vistrain.models.registry import create_backbone
    from vistrain.training.features import extract_features

    torch.manual_seed(0)
    backbone = create_backbone("efficientnet_lite0", pretrained=False)
    prep = Preprocessing(size=64, mean=(0.5,) * 3, std=(0.5,) * 3)
    pixels = np.random.default_rng(0).integers(0, 256, (7, 64, 64, 3), dtype=np.uint8)
    default = extract_features(backbone, pixels, prep)
    by_three = extract_features(backbone, pixels, prep, batch_size=3)
    assert default.shape == (7, 1280)
    np.testing.assert_allclose(default, by_three, rtol=1e-4, atol=1e-5)



@pytest.mark.parametrize("weighted", [False, True])
def test_passes_give_the_whole_batch_gradient(weighted):
    import torch
    from torch import nn

    from vistrain.training.finetune import accumulate

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU6(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 3))
    net.train()
    net[1].eval()  # frozen BatchNorm, as fine-tuning runs it
    x, y = torch.randn(10, 3, 8, 8), torch.tensor([0, 1, 2, 0, 0, 1, 2, 2, 0, 1])
    weight = torch.tensor([0.5, 2.0, 1.0]) if weighted else None

    whole = nn.CrossEntropyLoss(weight=weight, label_smoothing=0.1)(net(x), y)
    whole.backward()
    expected = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()

    loss, correct = accumulate(net, nn.CrossEntropyLoss(weight=weight, label_smoothing=0.1, reduction="sum"),
                               x, y, micro=3, device=torch.device("cpu"))
    assert loss.item() == pytest.approx(whole.item(), rel=1e-5)
    assert correct == int((net(x).argmax(1) == y).sum())
    for p, g in zip(net.parameters(), expected):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)


def test_training_under_a_memory_cap_is_the_same_training(split_folders, tmp_path, cache_dir):
    from conftest import FAST

    import vistrain

    # On the CPU: host memory is what the cap limits, and float32 there repeats exactly (a GPU's
    # float16 steps and cuDNN kernels would differ between the two runs by more than the passes do).
    opts = dict(cache_dir=cache_dir, mode="finetune", epochs=2, batch_size=8, device="cpu", **FAST)
    free = vistrain.train(split_folders, out=tmp_path / "free", **opts)
    capped = vistrain.train(split_folders, out=tmp_path / "capped", max_memory=0.01, **opts)  # below what torch holds
    assert any("passes of up to 1 images" in n for n in capped.result.notes)
    assert not any("passes" in n for n in free.result.notes)
    a, b = free.result.finetune.history, capped.result.finetune.history
    assert len(a) == len(b) == 2
    for x, y in zip(a, b):
        assert y.train_loss == pytest.approx(x.train_loss, rel=1e-3)
        assert y.valid_loss == pytest.approx(x.valid_loss, rel=1e-3)
        assert y.train_accuracy == x.train_accuracy


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and glibc's malloc_trim")
def test_release_gives_freed_heap_memory_back():
    # 64 KB blocks come from the heap (below glibc's mmap threshold); freeing every other one leaves
    # holes that plain free() keeps, so only an explicit trim can return them.
    blocks = [np.ones(64 * 1024 // 8) for _ in range(3000)]
    del blocks[::2]
    gc.collect()
    held = process_rss_bytes()
    release_freed_memory()
    assert process_rss_bytes() < held - 50e6
    assert all(float(b[0]) == 1.0 for b in blocks)  # what is still referenced is untouched

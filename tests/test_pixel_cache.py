"""The disk pixel cache and the batch prefetcher (issue #3): decode once, never wait on data."""

from __future__ import annotations

import hashlib
import threading
import time

import numpy as np
import pytest
from conftest import FAST

import vistrain
from vistrain.data.pixel_cache import DiskCanvases, PixelCache
from vistrain.models.registry import get_backbone
from vistrain.training.loader import Prefetcher
from vistrain.training.pixels import decode_all


def file_sha1(path) -> str:
    return hashlib.sha1(open(path, "rb").read()).hexdigest()


def _photos(folder):
    return sorted(str(p) for p in folder.rglob("*.png"))


def test_second_decode_reads_the_cache_and_not_the_files(class_folders, tmp_path):
    prep = get_backbone("efficientnet_lite0").preprocessing(64)
    paths = _photos(class_folders)
    keys = [file_sha1(p) for p in paths]
    cache = PixelCache(tmp_path / "cache", prep)
    pixels, canvases = decode_all(paths, prep, canvases=True, cache=cache, keys=keys)
    ref_pixels, ref_canvases = decode_all(paths, prep, canvases=True)  # no cache: all in memory
    assert isinstance(canvases, DiskCanvases) and len(canvases) == len(paths)
    assert np.array_equal(pixels, ref_pixels)
    assert all(np.array_equal(a, b) for a, b in zip(canvases, ref_canvases))
    assert cache.disk_bytes() > 0

    # Paths that no longer exist: only the cache can answer, so nothing was decoded.
    gone = [str(tmp_path / "gone" / f"{i}.png") for i in range(len(paths))]
    again, again_canvases = decode_all(gone, prep, canvases=True, cache=cache, keys=keys)
    assert np.array_equal(again, ref_pixels)
    assert np.array_equal(again_canvases[3], ref_canvases[3])
    # Canvases only (training set with cached features): no eval views materialised.
    none, lazy = decode_all(gone, prep, canvases=True, cache=cache, keys=keys, pixels=False)
    assert none is None and np.array_equal(lazy[0], ref_canvases[0])


def test_cache_entries_depend_on_the_preprocessing(class_folders, tmp_path):
    spec = get_backbone("efficientnet_lite0")
    a = PixelCache(tmp_path, spec.preprocessing(64))
    b = PixelCache(tmp_path, spec.preprocessing(64, "pad"))
    c = PixelCache(tmp_path, spec.preprocessing(96))
    assert len({a.folder, b.folder, c.folder}) == 3


def test_a_damaged_cache_entry_is_rebuilt(class_folders, tmp_path):
    prep = get_backbone("efficientnet_lite0").preprocessing(64)
    paths = _photos(class_folders)[:3]
    keys = [file_sha1(p) for p in paths]
    cache = PixelCache(tmp_path / "cache", prep)
    ref, _ = decode_all(paths, prep, cache=cache, keys=keys)
    cache._file(keys[1]).write_bytes(b"cut short")
    again, _ = decode_all(paths, prep, cache=cache, keys=keys)
    assert np.array_equal(again, ref) and cache.load(keys[1]) is not None


def test_decode_with_cache_needs_one_key_per_path(tmp_path):
    prep = get_backbone("efficientnet_lite0").preprocessing(64)
    with pytest.raises(ValueError, match="content hash per path"):
        decode_all(["a.png", "b.png"], prep, cache=PixelCache(tmp_path, prep), keys=["k"])


def test_finetuning_from_the_disk_cache_equals_in_memory(split_folders, tmp_path):
    opts = dict(mode="finetune", epochs=1, batch_size=8, **FAST)
    cached = vistrain.train(split_folders, out=tmp_path / "a", cache_dir=tmp_path / "cache", **opts)
    memory = vistrain.train(split_folders, out=tmp_path / "b", cache_dir=False, **opts)
    h_cached, h_memory = cached.result.finetune.history[0], memory.result.finetune.history[0]
    assert h_cached.valid_loss == pytest.approx(h_memory.valid_loss, abs=1e-5)
    assert h_cached.train_loss == pytest.approx(h_memory.train_loss, abs=1e-5)
    assert 0 <= h_cached.data_wait < h_cached.seconds
    assert "data_wait" in (tmp_path / "a" / "history.csv").read_text().splitlines()[0]
    assert any((tmp_path / "cache" / "pixels").rglob("*.safetensors"))


def test_prefetcher_keeps_order_and_overlaps_work():
    made = []

    def make(i):
        made.append((i, threading.current_thread().name))
        time.sleep(0.02)
        return i * 10

    batches = Prefetcher(make, 6, ahead=2)
    out = []
    for b in batches:
        time.sleep(0.03)  # the "training step": longer than making a batch, so no waiting after the first
        out.append(b)
    assert out == [0, 10, 20, 30, 40, 50]
    assert [i for i, _ in made] == list(range(6))
    assert all(name.startswith("vistrain-batches") for _, name in made)
    assert batches.wait_seconds < 0.06  # only the first batch is waited for


def test_prefetcher_passes_errors_through_and_stops_on_break():
    def bad(i):
        if i == 2:
            raise OSError("disk gone")
        return i

    with pytest.raises(OSError, match="disk gone"):
        list(Prefetcher(bad, 5))
    made = []
    for b in Prefetcher(lambda i: made.append(i) or i, 100, ahead=2):
        if b == 1:
            break
    assert len(made) <= 4  # queued batches are dropped, not all 100 made
    with pytest.raises(ValueError, match="ahead=0"):
        Prefetcher(lambda i: i, 3, ahead=0)


def test_cache_command_reports_sizes_and_clears_parts(class_folders, tmp_path, capsys):
    from vistrain.cli import main

    cache = tmp_path / "c"
    vistrain.train(class_folders, out=tmp_path / "run", cache_dir=cache, mode="probe", **FAST)
    assert main(["cache", "--cache-dir", str(cache)]) == 0
    shown = capsys.readouterr().out
    assert "features" in shown and "scan" in shown and "MB" in shown
    assert (cache / "features").exists()
    assert main(["cache", "--cache-dir", str(cache), "--clear", "features"]) == 0
    assert not (cache / "features").exists() and (cache / "scan.json").exists()
    assert main(["cache", "--cache-dir", str(cache), "--clear", "bogus"]) == 2
    assert "unknown cache part" in capsys.readouterr().out


def test_prefetcher_with_several_workers_keeps_order():
    def make(i):
        time.sleep(0.001 * (7 - i % 7))  # later batches often finish first
        return i, threading.current_thread().name

    batches = Prefetcher(make, 40, workers=4)
    out = list(batches)
    assert [i for i, _ in out] == list(range(40))
    assert len({name for _, name in out}) > 1
    assert batches.ahead == 5
    with pytest.raises(ValueError, match="workers=0"):
        Prefetcher(make, 3, workers=0)


def test_finetuning_batches_do_not_depend_on_the_number_of_workers(split_folders, tmp_path, cache_dir, monkeypatch):
    """Each batch has its own seeded generator: a GPU run's several workers make the batches one makes."""
    from conftest import FAST

    import vistrain
    from vistrain.training import finetune

    opts = dict(cache_dir=cache_dir, mode="finetune", epochs=2, batch_size=4, device="cpu", **FAST)
    one = vistrain.train(split_folders, out=tmp_path / "one", **opts).result.finetune.history
    monkeypatch.setattr(finetune, "batch_workers", lambda device: 3)
    three = vistrain.train(split_folders, out=tmp_path / "three", **opts).result.finetune.history
    assert [(h.train_loss, h.valid_loss) for h in one] == [(h.train_loss, h.valid_loss) for h in three]

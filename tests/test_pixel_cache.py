"""The disk pixel cache and the batch prefetcher (issue #3): decode once, never wait on data."""

from __future__ import annotations

import hashlib
import os
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
    cache.entry_file(keys[1]).write_bytes(b"cut short")
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
    assert "pixels are kept to 20 GB ($VISTRAIN_PIXEL_CACHE_GB)" in " ".join(shown.split())
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


def test_a_cache_entry_removed_during_training_is_decoded_again(class_folders, tmp_path):
    """``vistrain cache --clear pixels``, or another run trimming the cache, while a run trains."""
    prep = get_backbone("efficientnet_lite0").preprocessing(64)
    paths = _photos(class_folders)[:4]
    keys = [file_sha1(p) for p in paths]
    cache = PixelCache(tmp_path / "cache", prep)
    _, canvases = decode_all(paths, prep, canvases=True, cache=cache, keys=keys)
    before = canvases[2]
    cache.entry_file(keys[2]).unlink()
    assert np.array_equal(canvases[2], before) and cache.has(keys[2])  # rebuilt from its photo, and stored
    cache.entry_file(keys[1]).unlink()
    assert np.array_equal(canvases[0:2][1], decode_all(paths[1:2], prep, canvases=True)[1][0])
    # Without the photos' paths there is nothing to rebuild from: the error names the entry.
    with pytest.raises(FileNotFoundError, match=keys[3]):
        cache.entry_file(keys[3]).unlink()
        DiskCanvases(cache, keys)[3]
    with pytest.raises(ValueError, match="pixel cache holds"):
        decode_all(paths, get_backbone("efficientnet_lite0").preprocessing(96), cache=cache, keys=keys)


def test_trim_removes_the_entries_used_longest_ago_and_spares_the_running_job(tmp_path, monkeypatch):
    from vistrain.cache import pixel_cache_limit, trim_pixels

    now = time.time()
    folder = tmp_path / "pixels"
    ages = {"a/00/old.safetensors": 5000, "b/11/older.safetensors": 9000, "a/22/mine.safetensors": -1,
            "b/33/recent.safetensors": 100}
    for name, age in ages.items():
        f = folder / name
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"x" * 1000)
        os.utime(f, (now - age, now - age))
    done = trim_pixels(tmp_path, limit=2500, since=now - 10)
    left = sorted(p.name for p in folder.rglob("*.safetensors"))
    assert left == ["mine.safetensors", "recent.safetensors"]  # oldest first, down to the limit
    assert (done.files, done.bytes, done.total) == (2, 2000, 2000)
    # The running job's entries stay even over the limit; nothing else is left to remove.
    done = trim_pixels(tmp_path, limit=10, since=now - 10)
    assert sorted(p.name for p in folder.rglob("*.safetensors")) == ["mine.safetensors"] and done.total == 1000
    # Entries a job is about to read stay however old, and count against the limit; the same image
    # at another input size (another folder) is not spared.
    for name in ("a/44/kept.safetensors", "b/44/kept.safetensors", "b/55/stale.safetensors"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"x" * 1000)
        os.utime(folder / name, (now - 9999, now - 9999))
    done = trim_pixels(tmp_path, limit=2500, since=now - 10, keep={folder / "a/44/kept.safetensors"})
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*.safetensors")) == \
        ["a/22/mine.safetensors", "a/44/kept.safetensors"]
    assert (done.files, done.total) == (2, 2000)
    assert trim_pixels(tmp_path / "nothing", 10, now).files == 0

    monkeypatch.delenv("VISTRAIN_PIXEL_CACHE_GB", raising=False)
    assert pixel_cache_limit() == 20e9
    monkeypatch.setenv("VISTRAIN_PIXEL_CACHE_GB", "inf")
    assert pixel_cache_limit() == float("inf")
    for bad in ("0", "-3", "lots"):
        monkeypatch.setenv("VISTRAIN_PIXEL_CACHE_GB", bad)
        with pytest.raises(ValueError, match=f"VISTRAIN_PIXEL_CACHE_GB={bad!r} must be a positive"):
            pixel_cache_limit()


def test_training_keeps_the_pixel_cache_within_its_limit(split_folders, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    stale = cache / "pixels" / "v1-crop999-old" / "ab" / "stale.safetensors"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"x" * 10_000)
    os.utime(stale, (time.time() - 86400, time.time() - 86400))
    monkeypatch.setenv("VISTRAIN_PIXEL_CACHE_GB", "0.000001")  # 1 kB: less than this run alone needs
    lines = []

    from vistrain.progress import SilentReporter

    class Log(SilentReporter):
        def log(self, message: str) -> None:
            lines.append(message)

    run = vistrain.train(split_folders, out=tmp_path / "run", cache_dir=cache, mode="finetune", epochs=1,
                         batch_size=8, reporter=Log(), **FAST)
    assert not stale.exists()
    mine = list((cache / "pixels").rglob("*.safetensors"))
    assert len(mine) == 27  # every image of this run (18 train, 9 valid) stays, over the limit or not
    # Removed before decoding, making room for this run's own entries (not only at its end).
    trims = [i for i, line in enumerate(lines) if "removed the 1 entry used longest ago" in line]
    assert trims and "with room for this run's 27 new images" in lines[trims[0]], lines
    assert trims[0] < next(i for i, line in enumerate(lines) if line.startswith("  pixel cache: "))
    assert run.result.finetune.history  # and the run trained from them

    # A second run over the same photos, their entries now old and over the limit: they are this
    # run's images, so they stay (not decoded again); another dataset's entry goes.
    inodes = {f: f.stat().st_ino for f in mine}
    for f in mine:
        os.utime(f, (time.time() - 7200, time.time() - 7200))
    stale.write_bytes(b"x" * 10_000)
    os.utime(stale, (time.time() - 86400, time.time() - 86400))
    lines.clear()
    vistrain.train(split_folders, out=tmp_path / "run2", cache_dir=cache, mode="finetune", epochs=1,
                   batch_size=8, reporter=Log(), **FAST)
    assert not stale.exists() and {f: f.stat().st_ino for f in mine} == inodes
    assert any("removed the 1 entry used longest ago" in line and "room" not in line for line in lines), lines

"""Layouts, scanning, the scan cache, splits and the clear errors for unusable data."""

from __future__ import annotations

import hashlib
import re

import pytest
from conftest import make_image, write_class_folders

from vistrain.data.dataset import DataConfig, build_eval_index, build_index
from vistrain.data.layout import DataError


def _index(root, cache=None, **kw):
    return build_index(DataConfig(root, cache_dir=cache, **kw))


def test_split_folders_with_flat_test_labelled_from_names(split_folders):
    idx = _index(split_folders)
    assert idx.layout.kind == "split-folders"
    assert idx.classes == ["circles", "squares", "stripes"]
    counts = idx.counts()
    assert counts["train"] == {"circles": 6, "squares": 6, "stripes": 6}
    assert counts["valid"] == {"circles": 3, "squares": 3, "stripes": 3}
    assert counts["test"] == {"circles": 2, "squares": 2, "stripes": 2}
    assert any("file names" in n for n in idx.layout.notes)


def test_class_folders_are_split_stratified_and_reproducibly(class_folders):
    a = _index(class_folders, seed=1)
    b = _index(class_folders, seed=1)
    c = _index(class_folders, seed=2)
    assert a.layout.kind == "class-folders"
    assert a.counts()["valid"] == {"circles": 2, "squares": 2, "stripes": 2}  # round(8 * 0.2)
    split = lambda i: {r.path: r.split for r in i.records}
    assert split(a) == split(b)
    assert split(a) != split(c)


def test_sub_folders_of_class_folders_are_read_and_said(tmp_path):
    root = write_class_folders(tmp_path / "photos", per_class=6)
    for year in ("2019", "2020"):  # photos sorted by year inside a class: still that class
        (root / "circles" / year).mkdir()
        make_image("circles", int(year)).save(root / "circles" / year / f"c{year}.png")
    # What unzipping a macOS archive leaves, and a run written inside the photos with its report's copies.
    (root / "__MACOSX" / "squares").mkdir(parents=True)
    make_image("squares", 7).save(root / "__MACOSX" / "squares" / "s.png")
    run = root / "runs" / "latest"
    (run / "errors").mkdir(parents=True)
    (run / "model.safetensors").write_bytes(b"x")
    (run / "config.json").write_text("{}")
    make_image("stripes", 9).save(run / "errors" / "wrong.png")
    (root / "stripes" / ".hidden").mkdir()
    make_image("stripes", 8).save(root / "stripes" / ".hidden" / "h.png")
    idx = _index(root)
    assert idx.classes == ["circles", "squares", "stripes"]
    nested = sorted(r.path for r in idx.records if "/20" in r.path)
    assert nested == [str(root / "circles" / y / f"c{y}.png") for y in ("2019", "2020")]
    assert sum(idx.counts()[s].get("circles", 0) for s in ("train", "valid")) == 8
    assert len(idx.records) == 20 and not idx.skipped
    assert "2 file(s) in sub-folders of class folders (circles/2019/, circles/2020/), each labelled by its class folder" \
        in idx.layout.notes
    assert "runs/latest/ (a vistrain run) ignored" in idx.layout.notes
    make_image("circles", 3).save(root / "stray.png")
    assert f"1 file(s) directly in {root} (outside class folders) ignored" in _index(root).layout.notes
    (root / "stray.png").unlink()
    # Copies that predict --into sorted by a model's answers, inside the photos: not hand labels.
    from vistrain.api import sort_into

    sort_into([{"label": "squares", "unsure": False, "path": str(root / "circles" / "circles_0.png")}],
              root / "sorted")
    assert (root / "sorted" / "squares" / "circles_0.png").exists()
    again = _index(root)
    assert again.classes == idx.classes and len(again.records) == 20
    assert "sorted/ (copies sorted by vistrain predict --into) ignored" in again.layout.notes
    # Trained on directly, the sorted folder is data like any other (its marker is hidden).
    from vistrain.data.layout import discover

    assert [(e.path.name, e.label) for e in discover(root / "sorted").entries] == [("circles_0.png", "squares")]
    # The split layout reads sub-folders the same way, in every split.
    split = tmp_path / "split"
    write_class_folders(split / "train", per_class=4)
    write_class_folders(split / "valid", per_class=2, start=50)
    (split / "valid" / "squares" / "more").mkdir()
    make_image("squares", 77).save(split / "valid" / "squares" / "more" / "m.png")
    idx = _index(split)
    assert idx.counts()["valid"]["squares"] == 3
    assert any(n.startswith("1 file(s) in sub-folders of class folders (valid/squares/more/)") for n in idx.layout.notes)
    # Files beside the class folders of a split are said to be left out, as beside the root's.
    make_image("circles", 6).save(split / "train" / "stray.png")
    assert "1 file(s) directly in train/ (outside class folders) ignored" in _index(split).layout.notes
    # A class folder left empty (in both splits) is said, not silently dropped.
    (split / "train" / "dogs").mkdir()
    (split / "valid" / "dogs").mkdir()
    idx = _index(split)
    assert idx.classes == ["circles", "squares", "stripes"]
    assert {"train/dogs/ has no files: not a class", "valid/dogs/ has no files: not a class"} <= set(idx.layout.notes)


def test_flat_folder_with_regex_and_csv(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(3):
        make_image("circles", i).save(flat / f"circles_{i}.png")
        make_image("squares", 50 + i).save(flat / f"squares_{i}.png")
    idx = build_eval_index(DataConfig(flat, label_from_name=r"(.+)_\d+"))
    assert idx.layout.kind == "flat"
    assert sorted({r.label for r in idx.records}) == ["circles", "squares"]

    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("path,label\n" + "".join(f"flat/circles_{i}.png,round\nflat/squares_{i}.png,box\n" for i in range(3)))
    idx = _index(csv_path)
    assert idx.layout.kind == "csv"
    assert idx.classes == ["box", "round"]
    assert {r.split for r in idx.records} == {"train", "valid"}


def test_flat_folder_without_regex_is_a_clear_error(tmp_path):
    (tmp_path / "flat").mkdir()
    make_image("circles", 0).save(tmp_path / "flat" / "a.png")
    with pytest.raises(DataError, match="--label-from-name"):
        _index(tmp_path / "flat")


def test_regex_that_does_not_match_names_the_file(tmp_path):
    (tmp_path / "flat").mkdir()
    make_image("circles", 0).save(tmp_path / "flat" / "IMG0001.png")
    with pytest.raises(DataError, match="IMG0001"):
        build_eval_index(DataConfig(tmp_path / "flat", label_from_name=r"([a-z]+)_\d+"))


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda root: None, "no such file or folder"),
        (lambda root: (root / "a").mkdir(parents=True), "no files found"),
        (lambda root: write_class_folders(root, per_class=3, classes=("circles",)), "at least 2 classes"),
        (lambda root: (write_class_folders(root, per_class=3, classes=("circles", "squares")),
                       write_class_folders(root, per_class=1, classes=("stripes",))), "'stripes' (1 image)"),
    ],
)
def test_unusable_datasets_fail_with_the_path_and_reason(tmp_path, setup, message):
    root = tmp_path / "data"
    setup(root)
    with pytest.raises(DataError) as info:
        _index(root)
    assert message in str(info.value)
    assert str(root) in str(info.value) or "stripes" in str(info.value)


def test_train_and_valid_classes_must_agree(tmp_path):
    root = tmp_path / "d"
    write_class_folders(root / "train", per_class=2)
    write_class_folders(root / "valid", per_class=2, classes=("circles", "squares"))
    with pytest.raises(DataError, match=r"only in .*train: stripes"):
        _index(root)


def test_no_usable_images_is_an_error(tmp_path):
    root = tmp_path / "d"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        (root / c / "x.jpg").write_text("not an image")
    with pytest.raises(DataError, match="none of the 2 file"):
        _index(root)


def _tree_digest(root):
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_bad_files_are_skipped_listed_and_left_in_place(class_folders, cache_dir):
    (class_folders / "circles" / "empty.jpg").write_bytes(b"")
    (class_folders / "squares" / "readme.txt").write_text("hello")
    good = (class_folders / "stripes" / "stripes_0.png").read_bytes()
    (class_folders / "stripes" / "cut.png").write_bytes(good[: len(good) // 3])
    before = _tree_digest(class_folders)

    idx = _index(class_folders, cache_dir)
    reasons = {r.path.split("/")[-1]: r.reason for r in idx.skipped}
    assert set(reasons) == {"empty.jpg", "readme.txt", "cut.png"}
    assert "empty" in reasons["empty.jpg"]
    assert "not an image" in reasons["readme.txt"]
    assert "truncated" in reasons["cut.png"] or "corrupt" in reasons["cut.png"]
    assert len(idx.records) == 24
    report = idx.report()
    assert report["n_skipped"] == 3 and all(s["reason"] for s in report["skipped"])
    assert _tree_digest(class_folders) == before  # nothing deleted, moved or rewritten


def test_scan_cache_is_reused_and_invalidated_by_changes(class_folders, cache_dir):
    first = _index(class_folders, cache_dir)
    assert first.from_cache == 0
    second = _index(class_folders, cache_dir)
    assert second.from_cache == 24
    # Rewriting a file changes its size/mtime: it is scanned again, and now found corrupt.
    (class_folders / "circles" / "circles_0.png").write_bytes(b"garbage")
    third = _index(class_folders, cache_dir)
    assert third.from_cache == 23
    assert [r.path.split("/")[-1] for r in third.skipped] == ["circles_0.png"]


def test_records_know_size_format_and_hash(class_folders):
    idx = _index(class_folders)
    r = idx.records[0]
    assert (r.width, r.height) == (56, 48)
    assert r.format == "PNG" and r.mode == "RGB" and len(r.sha1) == 40


def test_an_unmarked_unsure_folder_is_a_class_with_a_warning(tmp_path):
    """``predict --into`` folders from before their marker file look like classes: say so."""
    from vistrain.data.layout import discover

    root = write_class_folders(tmp_path / "photos", per_class=3)
    (root / "unsure").mkdir()
    make_image("circles", seed=9).save(root / "unsure" / "x.png")
    layout = discover(root)
    assert "unsure" in {e.label for e in layout.entries}  # a person decides, vistrain does not drop photos
    note = next(n for n in layout.notes if n.startswith("unsure/ is taken as a class"))
    assert "'unsure' folder of `vistrain predict --into`" in note and "move it out" in note
    assert not any("circles/" in n and "predict --into" in n for n in layout.notes)


@pytest.mark.parametrize("fraction", [0, 1, 1.5, -0.2, True, "0.2"])
def test_a_validation_fraction_that_leaves_a_side_empty_is_refused_before_any_scan(tmp_path, fraction):
    """Checked when the settings are made, not after minutes of scanning a big folder."""
    with pytest.raises(DataError, match=rf"validation fraction {re.escape(repr(fraction))} must be between 0 and 1"):
        DataConfig(tmp_path / "not-even-there", valid_fraction=fraction)
    assert DataConfig(tmp_path, valid_fraction=0.3).valid_fraction == 0.3

"""Layout detection at its edges: unsafe labels, Unicode forms, classes named like split folders,
junk beside labelled files, and the messages for data that cannot be used."""

from __future__ import annotations

import csv
import shutil
import unicodedata
from pathlib import Path

import pytest
from conftest import make_image, write_class_folders

from vistrain.data.dataset import DataConfig, build_eval_index, build_index
from vistrain.data.layout import DataError, check_label, discover

NFD_CAFE = unicodedata.normalize("NFD", "café")
NFC_CAFE = unicodedata.normalize("NFC", "café")


def _images(folder, names, kind="circles", seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        make_image(kind, seed + i).save(folder / name)
    return folder


def _labels(layout):
    return sorted({e.label for e in layout.entries if e.label is not None})


# 1. Labels become folder names: refused at discovery.

@pytest.mark.parametrize("label", ["../escape", "a/b", "a\\b", ".", "..", ".hidden", "bell\x07"])
def test_unsafe_csv_label_names_the_csv_and_line(tmp_path, label):
    _images(tmp_path, ["a.png", "b.png"])
    csv_path = tmp_path / "labels.csv"
    with csv_path.open("w", newline="") as f:
        csv.writer(f).writerows([("path", "label"), ("a.png", "ok"), ("b.png", label)])
    with pytest.raises(DataError) as info:
        discover(csv_path)
    assert f"{csv_path}, line 3" in str(info.value) and repr(label) in str(info.value)
    assert check_label(label) in str(info.value)


def test_empty_label_from_regex_names_the_file_and_regex(tmp_path):
    flat = _images(tmp_path / "flat", ["cat_1.png", "_2.png"])
    with pytest.raises(DataError) as info:
        discover(flat, r"(.*)_\d+")
    assert "_2.png" in str(info.value) and r"(.*)_\d+" in str(info.value) and "empty" in str(info.value)


def test_check_label_accepts_ordinary_names():
    assert all(check_label(n) is None for n in ("cat", "outdoor bouldering", NFC_CAFE, "a.b", "train"))


# 2. Unicode: one class whatever the normal form of its name.

def test_nfd_and_nfc_class_folders_are_one_nfc_class(tmp_path):
    root = tmp_path / "photos"
    _images(root / NFD_CAFE, ["a.png", "b.png"])
    _images(root / NFC_CAFE, ["c.png", "d.png"], seed=10)
    _images(root / "tea", ["e.png", "f.png"], kind="squares")
    if len({p.name for p in root.iterdir()}) < 3:
        pytest.skip("this file system normalises names itself")
    assert _labels(discover(root)) == [NFC_CAFE, "tea"]


def test_csv_and_regex_labels_are_nfc(tmp_path):
    _images(tmp_path / "flat", [f"{NFD_CAFE}_1.png", "tea_1.png"])
    (tmp_path / "labels.csv").write_text(f"path,label\nflat/tea_1.png,{NFD_CAFE}\n", encoding="utf-8")
    assert _labels(discover(tmp_path / "labels.csv")) == [NFC_CAFE]
    assert _labels(discover(tmp_path / "flat", r"(.+)_\d+")) == [NFC_CAFE, "tea"]


def test_flat_names_in_nfd_match_nfc_classes(tmp_path):
    flat = _images(tmp_path / "flat", [f"{NFD_CAFE}_1.png", "tea_2.png"])
    assert _labels(discover(flat, classes=[NFC_CAFE, "tea"])) == [NFC_CAFE, "tea"]


def test_train_and_valid_compare_nfc_names(tmp_path):
    root = tmp_path / "d"
    for split, name in (("train", NFD_CAFE), ("valid", NFC_CAFE)):
        _images(root / split / name, ["a.png"])
        _images(root / split / "tea", ["b.png"], kind="squares")
    assert _labels(discover(root)) == [NFC_CAFE, "tea"]


# 3. --label-from-name over a flat folder that has sub-folders; vistrain's outputs are never classes.

def test_regex_reads_the_flat_files_and_names_the_ignored_sub_folders(tmp_path):
    flat = _images(tmp_path / "flat", ["cat_1.png", "cat_2.png", "dog_1.png", "dog_2.png"])
    _images(flat / "thumbs", ["cat_1.png"])
    _images(flat / "old", ["x.png"])
    layout = discover(flat, r"(.+)_\d+")
    assert layout.kind == "flat" and _labels(layout) == ["cat", "dog"]
    assert any("old/, thumbs/" in n and "ignored" in n for n in layout.notes)


def test_a_run_inside_train_is_not_a_class(tmp_path):
    root = tmp_path / "d"
    write_class_folders(root / "train", per_class=2, classes=("circles", "squares"))
    write_class_folders(root / "valid", per_class=2, classes=("circles", "squares"))
    run = root / "train" / "run1"
    run.mkdir()
    (run / "model.safetensors").write_bytes(b"x")
    (run / "config.json").write_text("{}")
    layout = discover(root)
    assert _labels(layout) == ["circles", "squares"]
    assert "train/run1/ (a vistrain run) ignored" in layout.notes


# 4. A class named train.

def test_a_class_named_train_among_others_is_class_folders(tmp_path):
    root = write_class_folders(tmp_path / "vehicles", per_class=2, classes=("circles", "squares"))
    _images(root / "train", ["t1.png", "t2.png"], kind="stripes")
    layout = discover(root)
    assert layout.kind == "class-folders" and _labels(layout) == ["circles", "squares", "train"]


def test_train_with_classes_but_no_validation_folder_is_still_an_error(tmp_path):
    write_class_folders(tmp_path / "d" / "train", per_class=2)
    with pytest.raises(DataError, match="no validation folder"):
        discover(tmp_path / "d")


# 5. Several validation or test folders; what the split layout leaves out.

@pytest.mark.parametrize("extra, named", [(("val", "validation"), "val/, valid/, validation/"),
                                         (("test", "testing"), "test/, testing/")])
def test_several_validation_or_test_folders_are_ambiguous(tmp_path, extra, named):
    root = tmp_path / "d"
    for split in ("train", "valid", *extra):
        write_class_folders(root / split, per_class=1, classes=("circles", "squares"))
    with pytest.raises(DataError) as info:
        discover(root)
    assert named in str(info.value) and str(root) in str(info.value)


def test_split_layout_notes_what_it_ignores(tmp_path):
    root = tmp_path / "d"
    for split in ("train", "valid", "holdout"):
        write_class_folders(root / split, per_class=1, classes=("circles", "squares"))
    (root / "notes.txt").write_text("hi")
    notes = discover(root).notes
    assert any("holdout/" in n and "notes.txt" in n and "ignored" in n for n in notes)


# 6. --label-from-name and files that are not photos.

def test_regex_lets_non_images_through_to_the_scan(tmp_path):
    flat = _images(tmp_path / "flat", ["cat_1.png", "cat_2.png", "dog_1.png", "dog_2.png"])
    (flat / "notes.txt").write_text("my notes")
    (flat / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0" + bytes(100))
    idx = build_eval_index(DataConfig(flat, label_from_name=r"(.+)_\d+"))
    assert idx.classes == ["cat", "dog"] and len(idx.records) == 4
    assert {r.path.split("/")[-1] for r in idx.skipped} == {"notes.txt", "Thumbs.db"}


def test_a_photo_that_does_not_match_says_how_many_did(tmp_path):
    flat = _images(tmp_path / "flat", ["cat_1.png", "dog_1.png", "IMG0001.png"])
    with pytest.raises(DataError, match=r"1 image file name\(s\) do not match .*\(2 matched\), e.g. 'IMG0001.png'"):
        discover(flat, r"([a-z]+)_\d+")


# 7. Byte copies under another label.

def test_a_class_made_of_copies_of_another_class_is_a_label_conflict(tmp_path):
    root = tmp_path / "d"
    _images(root / "cat", [f"c{i}.png" for i in range(5)])
    (root / "zebra").mkdir()
    for i in range(2):
        shutil.copy(root / "cat" / f"c{i}.png", root / "zebra" / f"z{i}.png")
    with pytest.raises(DataError) as info:
        build_index(DataConfig(root))
    text = str(info.value)
    assert "copies of one photo" not in text
    assert "'zebra'" in text and "labelled 'cat'" in text and "label conflict" in text
    assert str(root / "zebra" / "z0.png") in text and str(root / "cat" / "c0.png") in text


# 8. A class folder with nothing usable.

def test_a_class_folder_without_usable_images_is_said(tmp_path):
    root = write_class_folders(tmp_path / "d", per_class=3, classes=("circles", "squares"))
    (root / "bird").mkdir()
    (root / "bird" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0" + bytes(100))
    (root / "bird" / "a.jpg").write_bytes(b"\xff\xd8\xff\xe0broken")
    idx = build_index(DataConfig(root))
    assert idx.classes == ["circles", "squares"]
    assert "bird/ has no usable image (2 skipped): not a class" in idx.layout.notes


# 9. Messages.

def test_too_few_images_names_the_folder(tmp_path):
    root = write_class_folders(tmp_path / "d", per_class=3, classes=("circles", "squares"))
    write_class_folders(root, per_class=1, classes=("stripes",))
    with pytest.raises(DataError, match=f"'stripes' \\(1 image\\) in {root / 'stripes'}/"):
        build_index(DataConfig(root))


def test_empty_folder_says_no_images(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=f"no images found in {tmp_path / 'empty'}"):
        discover(tmp_path / "empty")


def test_non_utf8_csv_names_the_file(tmp_path):
    csv_path = tmp_path / "labels.csv"
    csv_path.write_bytes("path,label\na.png,caf\u00e9\n".encode("latin-1"))
    with pytest.raises(DataError) as info:
        discover(csv_path)
    assert str(csv_path) in str(info.value) and "UTF-8" in str(info.value)


@pytest.mark.parametrize("label", ["../escape", "a/b", ".."])
def test_a_run_with_an_unsafe_class_writes_nothing_outside_its_folders(tmp_path, label):
    """Runs trained before labels were checked may still carry such a class: --into and heat maps
    refuse it rather than write outside the folder they were given."""
    import numpy as np

    from vistrain.heatmap import save_heatmap
    from vistrain.prediction import sort_into

    photos = _images(tmp_path / "photos", ["a.png", "b.png"])
    rows = [{"path": str(photos / "a.png"), "label": "plain", "unsure": False, "familiar": True},
            {"path": str(photos / "b.png"), "label": label, "unsure": False, "familiar": True}]
    out = tmp_path / "out" / "sorted"
    with pytest.raises(DataError, match="cannot name a folder"):
        sort_into(rows, out, ["plain", label])
    assert not (tmp_path / "out").exists()  # refused before the first copy
    with pytest.raises(DataError, match="cannot name a folder"):
        save_heatmap(tmp_path / "heat", photos / "b.png", label, np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]


def test_links_leading_nowhere_are_listed_and_linked_sub_folders_noted(tmp_path):
    root = write_class_folders(tmp_path / "d", per_class=3, classes=("circles", "squares"))
    (root / "circles" / "moved.png").symlink_to(tmp_path / "nowhere.png")  # its target was moved
    (root / "squares" / "loop").symlink_to("loop")
    elsewhere = _images(tmp_path / "elsewhere", ["x.png"])
    (root / "circles" / "more").symlink_to(elsewhere, target_is_directory=True)
    idx = build_index(DataConfig(root))
    reasons = {Path(r.path).name: r.reason for r in idx.skipped}
    assert reasons["moved.png"].startswith("cannot read file") and reasons["loop"].startswith("cannot read file")
    assert "circles/more/ (a link to a folder, not followed) ignored" in idx.layout.notes


def test_an_error_about_what_is_left_says_what_was_skipped(tmp_path):
    root = write_class_folders(tmp_path / "d", per_class=3, classes=("circles", "squares"))
    write_class_folders(root, per_class=1, classes=("stripes",))
    (root / "stripes" / "cut.jpg").write_bytes(b"\xff\xd8\xff\xe0broken")  # its second photo, unreadable
    with pytest.raises(DataError, match=r"'stripes' \(1 image\).*\(1 file\(s\) skipped: 1 x .*; e\.g\. .*cut\.jpg\)"):
        build_index(DataConfig(root))
    (tmp_path / "labels.csv").write_text("path,label\nnowhere/a.png,cat\nnowhere/b.png,dog\n")
    with pytest.raises(DataError, match=r"none of the 2 file\(s\).*2 x cannot read file \(No such file"):
        build_index(DataConfig(tmp_path / "labels.csv"))


def test_sorting_into_a_folder_twice_copies_each_photo_once(tmp_path):
    from vistrain.prediction import sort_into

    photos = _images(tmp_path / "photos", ["a.png", "b.png"])
    other = _images(tmp_path / "other", ["a.png"], seed=7)  # another photo with the same name
    rows = [{"path": str(p), "label": "plain", "unsure": False, "familiar": True}
            for p in (photos / "a.png", photos / "b.png")]
    out = tmp_path / "sorted"
    first = sort_into(rows, out, ["plain"])
    again = sort_into(rows, out, ["plain"])  # the same photos, predicted again
    assert again == first and sorted(p.name for p in (out / "plain").iterdir()) == ["a.png", "b.png"]
    (clash,) = sort_into([{**rows[0], "path": str(other / "a.png")}], out, ["plain"])
    assert clash.name == "a_1.png" and clash.read_bytes() == (other / "a.png").read_bytes()


def test_a_csv_row_repeated_is_read_once_and_two_labels_for_one_photo_are_refused(tmp_path):
    _images(tmp_path / "img", ["a.png", "b.png", "c.png"])
    (tmp_path / "twice.csv").write_text("path,label\nimg/a.png,cat\nimg/b.png,dog\nimg/a.png,cat\nimg/c.png,dog\n")
    layout = discover(tmp_path / "twice.csv")
    assert [e.path.name for e in layout.entries] == ["a.png", "b.png", "c.png"]
    assert layout.notes == ["1 row(s) of twice.csv repeat a row above (same path, label and split): read once"]
    # A quoted note spanning two lines: line numbers are the file's, not the rows'.
    (tmp_path / "both.csv").write_text('path,label,note\nimg/a.png,cat,"two\nlines"\nimg/./a.png,dog,\n')
    with pytest.raises(DataError, match=r"both\.csv, lines 3 and 4: img/\./a\.png is listed twice, as 'cat'"):
        discover(tmp_path / "both.csv")


def test_a_csv_separated_by_semicolons_says_so(tmp_path):
    (tmp_path / "semi.csv").write_text("path;label\nimg/a.png;cat\n")
    with pytest.raises(DataError, match="separate the columns with commas"):
        discover(tmp_path / "semi.csv")


def test_a_run_folder_given_as_data_is_named_and_an_unused_regex_is_said(tmp_path):
    root = write_class_folders(tmp_path / "d", per_class=3, classes=("circles", "squares"))
    layout = discover(root, r"(.+)_\d+")  # class folders: their names are the labels
    assert layout.kind == "class-folders" and any(n.startswith("--label-from-name ignored") for n in layout.notes)
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.safetensors").write_bytes(b"")
    (run / "config.json").write_text("{}")
    with pytest.raises(DataError, match="a vistrain run .* not a folder of photos"):
        discover(run)

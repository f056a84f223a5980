"""vistrain audit: every kind of finding on planted problems, the grouped split, and train's audit.json."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import FAST, make_image, write_class_folders
from PIL import Image, ImageDraw, ImageOps

from vistrain.clean.audit import AuditConfig, audit
from vistrain.clean.label_errors import find_label_issues
from vistrain.data.dataset import DataConfig, build_index


def _config(root: Path, cache: Path, features: bool = False) -> AuditConfig:
    return AuditConfig(DataConfig(root, cache_dir=cache), features=features, image_size=FAST["image_size"])


def _by_kind(result) -> dict[str, list]:
    out: dict[str, list] = {}
    for f in result.findings:
        out.setdefault(f.kind, []).append(f)
    return out


def test_hash_level_findings_name_their_files(tmp_path, cache_dir):
    root = write_class_folders(tmp_path / "photos", per_class=6, fmt="jpg")
    shutil.copy(root / "circles/circles_0.jpg", root / "squares/copy_of_circle.jpg")  # conflict
    make_image("stripes", seed=2000).resize((112, 96)).save(root / "stripes/bigger.jpg", quality=95)  # near dup
    (root / "circles/broken.jpg").write_bytes((root / "circles/circles_1.jpg").read_bytes()[:300])
    (root / "squares/notes.png").write_bytes(b"this is not an image")
    for i in range(6):  # every PNG is a circle: a shortcut
        make_image("circles", seed=500 + i).save(root / f"circles/extra_{i}.png")
    found = _by_kind(audit(_config(root, cache_dir)))

    exact = found["exact_duplicate"]
    assert [sorted(f.files) for f in exact] == [["circles/circles_0.jpg", "squares/copy_of_circle.jpg"]]
    conflict = found["conflict"][0]
    assert conflict.labels == ["circles", "squares"] and conflict.severity == "error"
    near = [sorted(f.files) for f in found["near_duplicate"] if "stripes/bigger.jpg" in f.files]
    assert near == [["stripes/bigger.jpg", "stripes/stripes_0.jpg"]]
    unreadable = {f.files[0]: f.message for f in found["unreadable"]}
    assert set(unreadable) == {"circles/broken.jpg", "squares/notes.png"}
    assert "truncated" in unreadable["circles/broken.jpg"] or "corrupt" in unreadable["circles/broken.jpg"]
    shortcut = [f for f in found["shortcut"] if "file format" in f.message]
    assert len(shortcut) == 1 and shortcut[0].labels == ["circles"] and "PNG" in shortcut[0].message
    assert "leak" not in found  # nothing is split yet


def test_copies_across_splits_are_leaks(split_folders, cache_dir):
    shutil.copy(split_folders / "train/squares/squares_1.png", split_folders / "valid/squares/again.png")
    result = audit(_config(split_folders, cache_dir))
    leaks = _by_kind(result)["leak"]
    assert len(leaks) == 1
    assert sorted(leaks[0].files) == ["train/squares/squares_1.png", "valid/squares/again.png"]
    assert "inflated" in leaks[0].message
    blob = result.to_dict()
    assert blob["version"] == 1 and blob["summary"]["leak"] == 1
    assert all(f["files"] and f["severity"] in ("error", "warning", "info") for f in blob["findings"])


def test_a_planted_mislabel_and_placeholder_are_found(tmp_path, cache_dir, trained_run):
    # The exported ONNX backbone of the shared run (same backbone and size) saves an export here
    # (there is none when the shared run trained on a GPU: features came from PyTorch there).
    onnx = trained_run[0].parent / "cache" / "onnx"
    if onnx.is_dir():
        shutil.copytree(onnx, cache_dir / "onnx")
    root = write_class_folders(tmp_path / "photos", per_class=15)
    make_image("squares", seed=70).save(root / "circles/actually_a_square.png")
    placeholder = Image.new("RGB", (56, 48), (235, 235, 235))  # an "image not found" stand-in
    ImageDraw.Draw(placeholder).text((4, 18), "no image", fill=(90, 90, 90))
    placeholder.save(root / "stripes/placeholder.png")
    result = audit(_config(root, cache_dir, features=True))
    found = _by_kind(result)
    assert [f.files for f in found["outlier"]] == [["stripes/placeholder.png"]]
    assert [(f.files, f.labels) for f in found["label_error"]] == [(["circles/actually_a_square.png"],
                                                                    ["circles", "squares"])]
    assert found["label_error"][0].score > 0.9
    assert result.predictions["circles/actually_a_square.png"]["predicted"] == "squares"
    # A second audit reads the features from the cache: same answer.
    again = audit(_config(root, cache_dir, features=True))
    assert [f.files for f in _by_kind(again)["label_error"]] == [["circles/actually_a_square.png"]]


def test_confident_learning_finds_flipped_labels():
    rng = np.random.default_rng(0)
    n, k = 600, 3
    truth = rng.integers(0, k, n)
    # Clean samples: the true class gets 50-95%; the 30 flipped ones: a confident 90% for their true class.
    top = rng.uniform(0.5, 0.95, n)
    flipped = rng.choice(n, 30, replace=False)
    top[flipped] = 0.9
    probs = np.repeat(((1 - top) / (k - 1))[:, None], k, axis=1)
    probs[np.arange(n), truth] = top
    given = truth.copy()
    given[flipped] = (truth[flipped] + 1) % k
    found = find_label_issues(given, probs)
    assert set(found.issues) == set(flipped)
    assert round(found.confident_joint.sum()) == n


def test_duplicates_stay_on_one_side_of_the_split(tmp_path):
    root = write_class_folders(tmp_path / "photos", per_class=10)
    for i in range(4):  # copies and resized copies of one circle and one square
        shutil.copy(root / "circles/circles_3.png", root / f"circles/dup_{i}.png")
        make_image("squares", seed=1005).resize((112, 96)).save(root / f"squares/big_{i}.png")
    for seed in range(6):
        idx = build_index(DataConfig(root, seed=seed))
        side = {Path(r.path).name: r.split for r in idx.records}
        assert len({side["circles_3.png"]} | {side[f"dup_{i}.png"] for i in range(4)}) == 1
        assert len({side["squares_5.png"]} | {side[f"big_{i}.png"] for i in range(4)}) == 1
        for c in ("circles", "squares", "stripes"):  # still stratified: each class on both sides
            assert {r.split for r in idx.records if r.label == c} == {"train", "valid"}
        # ... and each class's validation share stays its 20%: the 5 copies never join 3 valid places.
        valid = {c: sum(r.split == "valid" for r in idx.records if r.label == c) for c in ("circles", "squares")}
        assert valid == {"circles": 3, "squares": 3}


def test_the_same_shape_in_another_colour_is_not_a_duplicate(tmp_path, cache_dir):
    from vistrain.data.phash import phash

    def product(colour, seed):
        rng = np.random.default_rng(seed)
        img = Image.new("RGB", (96, 96), (245, 245, 245))
        x, y = rng.integers(4, 30, 2)
        w, h = rng.integers(20, 60, 2)
        draw = ImageDraw.Draw(img)
        (draw.ellipse if seed % 2 else draw.rectangle)([x, y, x + w, y + h], fill=colour)
        return img

    root = tmp_path / "shirts"
    for label, colour in (("red", (200, 30, 30)), ("blue", (30, 40, 190))):
        (root / label).mkdir(parents=True)
        for i in range(10):  # the same shirts, shot the same way, in two colours
            product(colour, i).save(root / label / f"{i}.png")
    product((200, 30, 30), 0).save(root / "red" / "0_again.jpg", quality=60)  # a re-encoded copy
    red, blue = Image.open(root / "red/3.png"), Image.open(root / "blue/3.png")
    assert (int(phash(red), 16) ^ int(phash(blue), 16)).bit_count() <= 2  # grey structure alone: alike

    found = _by_kind(audit(_config(root, cache_dir)))
    assert "conflict" not in found
    assert [sorted(f.files) for f in found["near_duplicate"]] == [["red/0.png", "red/0_again.jpg"]]
    # And the split is stratified as for any photos, not one cross-colour cluster on one side.
    idx = build_index(DataConfig(root, cache_dir=cache_dir))
    assert {c: sum(r.split == "valid" for r in idx.records if r.label == c) for c in ("red", "blue")} == {"red": 2, "blue": 2}

    # A black-and-white edit is still its photo (compared by brightness): kept with it, so it cannot
    # leak across the split. Colourless, it also matches the blue one: in a dataset whose classes are
    # colours, such a photo is worth a look anyway.
    ImageOps.grayscale(product((200, 30, 30), 4)).save(root / "red" / "4_bw.png")
    groups = [set(f.files) for f in _by_kind(audit(_config(root, cache_dir)))["near_duplicate"]]
    assert any({"red/4.png", "red/4_bw.png"} <= g for g in groups)


def test_train_prints_and_keeps_a_quick_audit(trained_run):
    run_dir, _ = trained_run
    blob = json.loads((run_dir / "audit.json").read_text())
    assert blob["version"] == 1 and blob["summary"] == {} and blob["findings"] == []


def test_cli_json_lists_findings(tmp_path, capsys):
    from vistrain.cli import main

    root = write_class_folders(tmp_path / "photos", per_class=4)
    shutil.copy(root / "stripes/stripes_2.png", root / "squares/dupe.png")
    code = main(["audit", str(root), "--json", "--no-features", "--cache-dir", str(tmp_path / "c"),
                 "--out", str(tmp_path / "audit.json")])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((tmp_path / "audit.json").read_text())
    assert printed["summary"] == {"exact_duplicate": 1, "conflict": 1}


@pytest.mark.parametrize("size", [10, 2000])
def test_cli_refuses_a_bad_image_size(tmp_path, capsys, size):
    from vistrain.cli import main

    root = write_class_folders(tmp_path / "photos", per_class=2)
    assert main(["audit", str(root), "--image-size", str(size)]) == 2
    assert f"--image-size {size}" in capsys.readouterr().out


def test_review_rows_label_sub_folder_files_by_their_class_folder(tmp_path):
    from vistrain.clean.app import suspects
    from vistrain.clean.audit import AuditResult, Finding

    dup = Finding("exact_duplicate", "2 identical files", ["train/cats/a.jpg", "train/cats/2019/dogs/b.jpg"])
    rows = suspects(AuditResult(tmp_path, [dup], classes=["cats", "dogs"]))
    # b.jpg is a cat (train/cats/ gives the label), though it sits in a sub-folder named like a class.
    assert [(r["path"], r["label"]) for r in rows] == [("train/cats/2019/dogs/b.jpg", "cats")]


def test_summary_line_counts_groups_in_words():
    from vistrain.clean.audit import AuditResult, Finding
    from vistrain.clean.render import summary_line

    found = [Finding("near_duplicate", "", ["a.jpg", "b.jpg"])] * 3 + [Finding("conflict", "", ["a.jpg", "c.jpg"])]
    found += [Finding("unreadable", "", ["x.jpg"])] * 2
    assert summary_line(AuditResult(Path("photos"), found)) == (
        "audit: 1 conflict, 3 groups of near duplicates, 2 unreadable files")
    assert summary_line(AuditResult(Path("photos"), [])) == "audit: nothing found"


def test_summary_line_tells_files_that_are_not_images_from_damaged_photos():
    """notes.txt and Thumbs.db are no loss; "3 unreadable files" read as three broken photos."""
    from vistrain.clean.audit import AuditResult, Finding
    from vistrain.clean.render import summary_line

    found = [Finding("unreadable", "skipped: not an image (unrecognised format)", [name])
             for name in ("notes.txt", "Thumbs.db")]
    assert summary_line(AuditResult(Path("photos"), found)) == "audit: 2 files that are not images"
    found.append(Finding("unreadable", "skipped: truncated file (image data ends early)", ["cut.jpg"]))
    assert summary_line(AuditResult(Path("photos"), found)) == (
        "audit: 1 unreadable file, 2 files that are not images")


def test_duplicate_findings_do_not_chain_look_alikes_into_one_photo():
    """A chain a-b-c-d-e-f (each alike to the next only) stays one cluster for the split, but the
    findings name groups whose photos are alike to one of them, not one six-photo "copy"."""
    from vistrain.clean.audit import hash_findings
    from vistrain.data.phash import duplicate_groups, tight_groups
    from vistrain.data.scan import Record

    n = 6
    chain = [(i, i + 1, 0.97) for i in range(n - 1)]
    sha1s = [f"{i:040x}" for i in range(n)]
    assert [sorted(g) for g in duplicate_groups(sha1s, [None] * n, -1, chain)] == [list(range(n))]
    groups = tight_groups(sha1s, chain)
    assert all(len(g) <= 3 and all(abs(a - b) <= 2 for a in g for b in g) for g in groups)
    assert sorted(i for g in groups for i in g) == list(range(n))  # everyone still in a group here
    # One photo alike to all the others (its copies, an edit matching two versions): one group.
    star = [(0, j, 0.99) for j in range(1, 5)]
    assert tight_groups(sha1s[:5], star) == [[0, 1, 2, 3, 4]]
    # Byte-identical copies count as one photo, whatever else links to them.
    same = [sha1s[0], sha1s[0], sha1s[0], sha1s[3]]
    assert tight_groups(same, [(0, 1), (0, 2), (2, 3, 0.99)]) == [[0, 1, 2, 3]]

    records = [Record(path=f"/d/c{i % 2}/{i}.jpg", label=f"c{i % 2}", split="train", ok=True, sha1=sha1s[i])
               for i in range(n)]
    found = hash_findings(Path("/d"), records, [], near_bits=-1, extra_pairs=chain)
    conflicts = [f for f in found if f.kind == "conflict"]
    assert conflicts and all(len(f.files) <= 3 for f in conflicts)


def test_audit_table_prints_paths_with_brackets_whole():
    from rich.console import Console

    from vistrain.clean.audit import AuditResult, Finding
    from vistrain.clean.render import audit_table

    files = ["a[/]x.png", "a[/[red]y.png"]  # a closing tag rich raised on; an opening one it swallowed
    result = AuditResult(Path("photos [old]"), [Finding("exact_duplicate", f"2 copies: {files[1]}", files)])
    console = Console(record=True, width=200)
    console.print(audit_table(result))
    text = console.export_text()
    assert "Audit of photos [old]" in text and files[0] in text and text.count(files[1]) == 2


def _copies(folder: Path, names: list[str], ages: list[int] | None = None) -> None:
    """The same photo under each of ``names`` (relative to ``folder``); ``ages``: seconds before now."""
    data = None
    for n, name in enumerate(names):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if data is None:
            make_image("circles", seed=7).save(path)
            data = path.read_bytes()
        else:
            path.write_bytes(data)
        if ages is not None:
            t = 1_700_000_000 - ages[n]
            os.utime(path, (t, t))


def _exact(root: Path, cache: Path):
    found = _by_kind(audit(_config(root, cache)))["exact_duplicate"]
    assert len(found) == 1
    return found[0]


def test_the_original_is_kept_and_its_copy_offered(tmp_path, cache_dir):
    """"img_5 copy.png" sorts before "img_5.png" (a space before a dot): the old rule kept the copy
    and offered the original for quarantine, even when the copy is the older file."""
    from vistrain.clean.app import suspects

    root = write_class_folders(tmp_path / "photos", per_class=2, classes=("circles", "squares"))
    _copies(root, ["circles/img_5.png", "circles/img_5 copy.png"], ages=[0, 3600])
    result = audit(_config(root, cache_dir))
    dup = _by_kind(result)["exact_duplicate"][0]
    assert dup.files == ["circles/img_5.png", "circles/img_5 copy.png"]
    assert dup.message == "2 byte-identical copies; keep circles/img_5.png (not named like a copy)"
    assert [r["path"] for r in suspects(result)] == ["circles/img_5 copy.png"]


@pytest.mark.parametrize("names, ages, kept, why", [
    # A name made by copying loses to the plain one, whatever the folder, length or age.
    (["cats/img-1.png", "cats/img.png"], [9, 0], "cats/img.png", "not named like a copy"),
    (["cats/Copy of b.png", "cats/x/b.png"], [9, 0], "cats/x/b.png", "not named like a copy"),
    # A number is a copy's mark only beside the name without it: img_1 and img_2 are two shots.
    (["cats/img_1.png", "cats/img_2.png"], [0, 9], "cats/img_2.png", "oldest"),
    (["cats/2019/a.png", "cats/zz.png"], [9, 0], "cats/zz.png", "shallowest path"),
    (["cats/aa.png", "cats/b.png"], [9, 0], "cats/b.png", "shortest path"),
    (["cats/a.png", "cats/b.png"], [0, 9], "cats/b.png", "oldest"),
    (["cats/b.png", "cats/a.png"], [5, 5], "cats/a.png", "first by name"),
    (["cats/a (1).png", "cats/a copy.png", "cats/x/a.png"], [0, 0, 0], "cats/x/a.png", "not named like a copy"),
])
def test_which_copy_is_kept_follows_the_rules_in_order(tmp_path, cache_dir, names, ages, kept, why):
    root = write_class_folders(tmp_path / "photos", per_class=1, classes=("squares",))
    _copies(root, names, ages)
    dup = _exact(root, cache_dir)
    assert dup.files[0] == kept and sorted(dup.files) == sorted(names)
    assert dup.message.endswith(f"; keep {kept} ({why})")


def test_the_choice_does_not_depend_on_the_order_files_are_listed():
    from vistrain.clean.keep import keep_order

    paths = ["c/img copy.png", "c/img (2).png", "c/img.png", "c/img_1.png", "c/deeper/img.png"]
    for shift in range(len(paths)):
        listed = paths[shift:] + paths[:shift]
        order, why = keep_order(listed)
        assert [listed[i] for i in order][:2] == ["c/img.png", "c/deeper/img.png"]
        assert why == "not named like a copy; shallowest path"


@pytest.mark.parametrize("copy", ["img_5 copy", "img_5 copy 2", "img_5 (1)", "img_5 - Copy", "img_5 - Copy (2)",
                                  "Copy of img_5", "Copy (2) of img_5", "img_5_copy", "copy_of_img_5", "img_5 (copy)",
                                  "img_5_1", "img_5-2", "IMG_5 COPY"])
def test_names_of_copies_are_recognised(copy):
    from vistrain.clean.keep import keep_order, looks_like_copy

    assert looks_like_copy(f"a/{copy}.png", ["a/img_5.png"])
    order, why = keep_order([f"a/{copy}.png", "a/img_5.png"])  # the copy first: listing order does not decide
    assert order[0] == 1 and why == "not named like a copy"


@pytest.mark.parametrize("name", ["img_5", "party (2019)", "photocopy", "copy", "img_6", "img_5_again"])
def test_plain_names_are_not_taken_for_copies(name):
    from vistrain.clean.keep import looks_like_copy

    assert not looks_like_copy(f"a/{name}.png", ["a/img_5.png"])


def test_near_duplicates_keep_by_the_same_rule(tmp_path, cache_dir):
    """An edited copy is a near duplicate, not a byte copy: the plain name is kept all the same."""
    from vistrain.clean.app import suspects

    root = write_class_folders(tmp_path / "photos", per_class=2, classes=("circles", "squares"))
    img = make_image("stripes", seed=40)
    img.save(root / "circles/shot.png")
    img.putpixel((0, 0), (0, 0, 0))
    img.save(root / "circles/shot copy.png")
    result = audit(_config(root, cache_dir))
    near = [f for f in _by_kind(result).get("near_duplicate", []) if "circles/shot.png" in f.files]
    assert len(near) == 1 and near[0].files == ["circles/shot.png", "circles/shot copy.png"]
    assert near[0].message == "2 near-identical photos; keep circles/shot.png (not named like a copy)"
    assert "circles/shot.png" not in [r["path"] for r in suspects(result)]


@pytest.mark.parametrize("copies, why", [
    # The held-out copy has the shorter path, so the old rule kept it and offered the training one.
    (["valid/squares/again.png"], "the training copy: the validation copy leaks a training image"),
    (["test/squares_x.png"], "the training copy: the test copy leaks a training image"),
    (["valid/squares/a.png", "test/squares_b.png"],
     "the training copy: the validation and test copies leak a training image"),
    # Before the name: the plain name in valid/ is the leak; of the training copies, the plain name is kept.
    (["valid/squares/squares_1.png", "train/squares/squares_1 copy.png"],
     "the training copy: the validation copy leaks a training image; not named like a copy"),
])
def test_a_copy_across_splits_keeps_the_training_copy(split_folders, cache_dir, copies, why):
    """A photo in train/ and in valid/ (or test/) is a leak: the validation score counts a photo the
    model trained on. The copy to move out is the held-out one, whatever its name or path."""
    from vistrain.clean.app import suspects

    kept = "train/squares/squares_1.png"
    for copy in copies:
        shutil.copy(split_folders / kept, split_folders / copy)
    result = audit(_config(split_folders, cache_dir))
    dup = [f for f in _by_kind(result)["exact_duplicate"] if kept in f.files]
    assert len(dup) == 1 and dup[0].files[0] == kept
    assert dup[0].message.endswith(f"; keep {kept} ({why})")
    leak = _by_kind(result)["leak"][0]
    assert leak.files[0] == kept  # the leak lists its files in the same order
    offered = {r["path"] for r in suspects(result)}
    assert kept not in offered and set(copies) <= offered


def test_copies_within_one_split_keep_by_the_other_rules():
    """The split decides only between a training copy and a held-out one."""
    from vistrain.clean.keep import keep_order

    order, why = keep_order(["valid/c/a.png", "valid/c/aa.png"], splits=["valid", "valid"])
    assert order[0] == 0 and why == "shortest path"
    order, why = keep_order(["valid/c/aa.png", "test/c_a.png"], splits=["valid", "test"])
    assert order[0] == 1 and why == "shallowest path"  # no training copy: neither is the leak
    order, why = keep_order(["train/c/x copy.png", "train/c/x.png", "valid/c/x.png"],
                            splits=["train", "train", "valid"])
    assert order == [1, 0, 2]
    assert why == "the training copy: the validation copy leaks a training image; not named like a copy"


def test_the_split_a_csv_gives_decides_too(tmp_path, cache_dir):
    """The training copy is the one the layout puts in train, wherever its folder: a CSV's split
    column says so, not the path."""
    root = tmp_path / "photos"
    _copies(root, ["deep/er/photo.png", "v.png"])
    for i in range(2):
        make_image("squares", seed=80 + i).save(root / f"sq{i}.png")
    rows = [("deep/er/photo.png", "circles", "train"), ("v.png", "circles", "valid"),
            ("sq0.png", "squares", "train"), ("sq1.png", "squares", "valid")]
    (root / "labels.csv").write_text("path,label,split\n" + "".join(",".join(r) + "\n" for r in rows))
    dup = _exact(root / "labels.csv", cache_dir)
    assert dup.files == ["deep/er/photo.png", "v.png"]
    assert dup.message.endswith("(the training copy: the validation copy leaks a training image)")

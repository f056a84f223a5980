"""The command line: train, evaluate (table and --json), predict (table, --csv, --into, --unsure), errors."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_image, write_labels_csv
from PIL import Image

from vistrain.cli import main
from vistrain.evaluation.metrics import classification_metrics


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One small probe run shared by the CLI tests (training is the slow part)."""
    from conftest import write_class_folders

    base = tmp_path_factory.mktemp("cli")
    data = write_class_folders(base / "photos", per_class=8)
    run = base / "run"
    code = main(["train", str(data), "--out", str(run), "--mode", "probe", "--image-size", "64",
                 "--cache-dir", str(base / "cache")])
    assert code == 0
    return data, run


def test_train_prints_a_summary(trained, tmp_path, capsys):
    data, _ = trained
    code = main(["train", str(data), "--out", str(tmp_path / "r"), "--mode", "probe", "--image-size", "64", "--no-cache"])
    out = capsys.readouterr().out
    assert code == 0
    assert "validation accuracy" in out and "Kept: linear probe" in out and "macro average" in out
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())["valid"]
    lo, hi = m["accuracy_ci"]
    assert lo <= m["accuracy"] <= hi and hi - lo > 0.1  # a handful of validation images: a wide interval
    assert f"95% CI {lo:.1%}–{hi:.1%}" in " ".join(out.split())
    assert str(tmp_path / "r") in out.replace("\n", "")
    # Validation chose C here: the summary says its figure flatters, and where an unbiased one comes from.
    said = " ".join(out.split())
    assert "validation images chose the probe's regularisation strength" in said
    assert "slightly optimistic estimate; a test/ folder (or `vistrain evaluate` on new photos) gives an unbiased" in said


def _flat_folder(folder: Path, per_class: int = 6) -> Path:
    """Layout (c): every class in one folder, labelled by the file names (circles_0.png, ...)."""
    folder.mkdir(parents=True)
    for ci, name in enumerate(("circles", "squares", "stripes")):
        for i in range(per_class):
            make_image(name, 1000 * ci + 7200 + i).save(folder / f"{name}_{i}.png")
    return folder


def test_train_points_to_an_audit_that_reads_the_data_as_it_did(tmp_path, capsys, monkeypatch):
    """`vistrain audit FOLDER` alone reads a flat folder as class folders and finds nothing: the
    command train suggests repeats --label-from-name, quoted for a shell, and says that notes.txt and
    Thumbs.db are not images (not "unreadable files", which reads as broken photos)."""
    monkeypatch.setenv("COLUMNS", "400")  # the suggested command on one line, unwrapped
    flat = _flat_folder(tmp_path / "flat train")
    (flat / "notes.txt").write_text("shot in May")
    (flat / "Thumbs.db").write_bytes(b"\0" * 64)
    assert main(["train", str(flat), "--label-from-name", r"(.+)_\d+", "--out", str(tmp_path / "r"),
                 "--mode", "probe", "--image-size", "64", "--no-cache"]) == 0
    line = next(x.strip() for x in capsys.readouterr().err.splitlines() if x.strip().startswith("audit:"))
    said, _, command = line.removesuffix(")").partition(" (details: ")
    assert said == "audit: 2 files that are not images"
    argv = shlex.split(command)
    assert argv == ["vistrain", "audit", str(flat), "--label-from-name", r"(.+)_\d+"]
    assert main([*argv[1:], "--no-features", "--no-cache"]) == 0
    assert "audit: 2 files that are not images" in capsys.readouterr().out


def test_train_lists_the_files_it_wrote(trained, tmp_path, capsys, monkeypatch):
    """Every file of the run folder that this run wrote, and none that an earlier one left there."""
    monkeypatch.setenv("COLUMNS", "400")
    data, _ = trained
    out = tmp_path / "r"
    out.mkdir()
    stale = out / "report.html"
    stale.write_text("an earlier run's report")
    os.utime(stale, (1e9, 1e9))
    assert main(["train", str(data), "--out", str(out), "--mode", "probe", "--image-size", "64", "--no-cache"]) == 0
    line = next(x.strip() for x in capsys.readouterr().out.splitlines() if "run saved in" in x)
    listed = line.partition(" (")[2].removesuffix(")").split(", ")
    written = sorted(p.name for p in out.iterdir() if p.is_file() and p != stale)
    assert sorted(listed) == written
    assert {"model.safetensors", "familiar.safetensors", "train_config.yaml", "data_report.json",
            "audit.json"} <= set(listed)


def test_train_says_when_the_unsure_threshold_answers_few_validation_images(trained, tmp_path, capsys, monkeypatch):
    """150 digits left a threshold of 0.9868 that answered 13% of validation; predict then said
    "unsure" for every photo. The rule stays; the summary says so and how to change it."""
    import vistrain.api
    from vistrain.evaluation.confidence import fit_confidence

    def strict(logits, labels, target_precision=0.95):
        settings = fit_confidence(logits, labels, target_precision)
        settings["calibration"]["coverage"] = 0.13
        return {**settings, "unsure_threshold": 0.9868}

    data, _ = trained
    argv = ["train", str(data), "--out", str(tmp_path / "r"), "--mode", "probe", "--image-size", "64", "--no-cache"]
    assert main(argv) == 0
    assert "--unsure" not in capsys.readouterr().out
    monkeypatch.setattr(vistrain.api, "fit_confidence", strict)
    assert main(argv) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert "on 13% of validation images" in said
    assert "'unsure' for 87% of photos like the validation ones" in said
    assert "--unsure P" in said and "--unsure 0 turns it off" in said


def test_evaluate_json_has_the_documented_keys(trained, tmp_path, capsys):
    _data, run = trained
    flat = tmp_path / "flat"
    flat.mkdir()
    for name in ("circles", "squares", "stripes"):
        for i in range(2):
            make_image(name, 7000 + i).save(flat / f"{name}_{i}.jpg")
    code = main(["evaluate", str(run), str(flat), "--label-from-name", r"(.+)_\d+", "--json"])
    m = json.loads(capsys.readouterr().out)
    assert code == 0
    assert {"accuracy", "per_class", "confusion_matrix", "classes", "n"} <= set(m)
    assert m["n"] == 6 and m["accuracy"] >= 5 / 6
    assert set(m["per_class"]["squares"]) == {"precision", "recall", "f1", "support"}
    # Named after the model's classes, the flat folder needs no regex (as a flat test/ in training).
    assert main(["evaluate", str(run), str(flat), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["confusion_matrix"] == m["confusion_matrix"]
    make_image("circles", 7100).save(flat / "IMG_0001.jpg")
    assert main(["evaluate", str(run), str(flat), "--json"]) == 2
    captured = capsys.readouterr()
    err = " ".join((captured.out + captured.err).split())
    assert "give --label-from-name REGEX" in err and "or name each file after its class" in err


def test_evaluate_table(trained, tmp_path, capsys):
    data, run = trained
    assert main(["evaluate", str(run), str(data)]) == 0
    out = capsys.readouterr().out
    assert "Confusion matrix" in out and "accuracy" in out and "stripes" in out
    # Its own training folder: said, not passed off as the model's accuracy on new photos.
    assert "images, 18 trained it and 6 chose its settings" in " ".join(out.split())
    assert "None of them is new to the model" in " ".join(out.split())
    # A copy of the training folder is recognised by content (split.csv keeps each image's sha1).
    shutil.copytree(data, tmp_path / "copy")
    assert main(["evaluate", str(run), str(tmp_path / "copy"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["overlap_with_run"] == {"train": 18, "valid": 6, "new": 0,
                                                                       "accuracy_new": None, "near": 0}


def test_evaluate_separates_images_the_run_has_seen(trained, tmp_path, capsys):
    _data, run = trained
    with (run / "split.csv").open() as f:
        seen = [r for r in csv.DictReader(f)][:4]  # some of the run's own images, by path
    new = tmp_path / "new"
    new.mkdir()
    rows = [(r["path"], r["label"]) for r in seen]
    # Two more of its own, shrunk and saved as JPEG: other bytes, the same look.
    shrunk = tmp_path / "shrunk"
    shrunk.mkdir()
    for r in seen[:2]:
        with Image.open(r["path"]) as im:
            im.convert("RGB").resize((im.width // 2, im.height // 2)).save(shrunk / (Path(r["path"]).stem + ".jpg"),
                                                                          quality=80)
        rows.append((str(shrunk / (Path(r["path"]).stem + ".jpg")), r["label"]))
    for i, name in enumerate(["circles", "squares", "stripes"]):
        make_image(name, 9100 + i).save(new / f"{name}.png")
        rows.append((str(new / f"{name}.png"), name))
    labels = write_labels_csv(tmp_path / "labels.csv", rows)
    assert main(["evaluate", str(run), str(labels), "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    o = m["overlap_with_run"]
    assert o["train"] + o["valid"] == 6 and o["near"] == 2 and o["new"] == 3 and m["n"] == 9
    # The accuracy on the new ones alone is what predict gets right on them.
    assert main(["predict", str(run), str(new), "--json"]) == 0
    preds = json.loads(capsys.readouterr().out)
    assert o["accuracy_new"] == pytest.approx(np.mean([Path(p["path"]).stem == p["label"] for p in preds]))


def _digest(folder):
    return {p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


def test_predict_csv_into_and_unsure(trained, tmp_path):
    _data, run = trained
    new = tmp_path / "new"
    new.mkdir()
    for i, name in enumerate(["circles", "squares", "stripes"]):
        make_image(name, 8000 + i).save(new / f"photo{i}.png")
    shutil.copy(new / "photo0.png", new / "sub_copy.png")
    (new / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    before = _digest(new)

    csv_path = tmp_path / "preds.csv"
    sorted_dir = tmp_path / "sorted"
    # --unsure 0 turns off the run's stored threshold: every answer is sorted into its class.
    # Exit 1: broken.jpg was not answered (every other file was, and is in the CSV and folders).
    assert main(["predict", str(run), str(new), "--csv", str(csv_path), "--into", str(sorted_dir), "--top-k", "2",
                 "--unsure", "0"]) == 1
    with csv_path.open() as f:
        rows = {r["path"].split("/")[-1]: r for r in csv.DictReader(f)}
    assert rows["photo0.png"]["label"] == "circles" and rows["photo1.png"]["label"] == "squares"
    assert float(rows["photo2.png"]["probability"]) > 0.5 and rows["photo2.png"]["top2"]
    assert rows["broken.jpg"]["label"] == "" and rows["broken.jpg"]["error"]
    # Copies, sorted by predicted class; originals untouched.
    assert (sorted_dir / "circles" / "photo0.png").exists() and (sorted_dir / "squares" / "photo1.png").exists()
    assert _digest(new) == before

    # A threshold above every probability makes every answer "unsure".
    (new / "broken.jpg").unlink()
    assert main(["predict", str(run), str(new), "--unsure", "0.999999", "--csv", str(csv_path), "--into", str(sorted_dir)]) == 0
    with csv_path.open() as f:
        good = [r for r in csv.DictReader(f) if not r["error"]]
    assert good and all(r["unsure"] == "true" for r in good)
    assert len(list((sorted_dir / "unsure").iterdir())) == 4
    # A second sort into the same folder never overwrites: new names instead.
    assert (sorted_dir / "circles" / "photo0.png").exists()


def test_predict_table_names_files_below_their_shared_folder(trained, tmp_path, capsys, monkeypatch):
    _data, run = trained
    monkeypatch.chdir(tmp_path)  # the folder as a user types it, relative
    new = Path("holiday photos, sorted later [2026]") / "new"
    (new / "sub").mkdir(parents=True)
    make_image("circles", 8100).save(new / "circle_photo.png")
    make_image("stripes", 8101).save(new / "sub" / "stripe_photo.png")
    assert main(["predict", str(run), str(new), "--top-k", "2", "--unsure", "0"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert f"in {new}" in lines[0] + "".join(lines[1:2]) and out.count("holiday") == 1  # named once, above
    row = next(line for line in lines if "circle_photo.png" in line)
    assert "circles" in row and "%" in row  # the answer, whole, on the file's own line
    assert any("sub/stripe_photo.png" in line and "stripes" in line for line in lines)


def test_predict_over_a_folder_passes_over_what_vistrain_wrote_there(trained, tmp_path, capsys):
    _data, run = trained
    new = tmp_path / "new"
    (new / "__MACOSX").mkdir(parents=True)
    for i, name in enumerate(["circles", "squares"]):
        make_image(name, 8200 + i).save(new / f"photo{i}.png")
    make_image("stripes", 8202).save(new / "__MACOSX" / "photo0.png")  # archive metadata, not a photo
    shutil.copytree(run, new / "old_run")  # a run folder holds copies of misclassified images
    make_image("stripes", 8203).save(new / "old_run" / "copy.png")
    assert main(["predict", str(run), str(new), "--into", str(new / "sorted"), "--unsure", "0", "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert sorted(Path(r["path"]).name for r in first) == ["photo0.png", "photo1.png"]
    assert len(list((new / "sorted").rglob("*.png"))) == 2

    # Again over the same folder: the sorted copies inside it are not answered for a second time.
    assert main(["predict", str(run), str(new), "--unsure", "0"]) == 0
    captured = capsys.readouterr()
    out = " ".join((captured.out + captured.err).split())
    assert "2 file(s): 2 classified" in out
    assert "sorted/ (copies sorted by vistrain predict --into) ignored" in out
    assert "old_run/ (a vistrain run) ignored" in out
    # A folder with nothing to classify is an error, not an empty table.
    (tmp_path / "empty" / ".thumbs").mkdir(parents=True)
    assert main(["predict", str(run), str(tmp_path / "empty")]) == 2
    assert f"{tmp_path / 'empty'}: no files to classify" in " ".join(capsys.readouterr().out.split())
    # Named directly, the sorted folder is read like any other.
    assert main(["predict", str(run), str(new / "sorted"), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2


def test_confusion_table_numbers_its_columns_when_class_names_do_not_fit():
    from rich.console import Console

    from vistrain.evaluation.render import confusion_table

    classes = ["indoor_bouldering", "indoor_sport_climbing", "outdoor_bouldering", "outdoor_sport_climbing"]
    metrics = {"classes": classes, "confusion_matrix": [[9, 1, 0, 0], [0, 12, 0, 0], [0, 0, 7, 0], [0, 0, 2, 30]]}

    def shown(width):
        console = Console(width=width, record=True, force_terminal=False)
        console.print(confusion_table(metrics, width=width))
        return console.export_text()

    narrow, wide = shown(80), shown(160)
    assert max(map(len, narrow.splitlines())) <= 80 and "…" not in narrow
    row = next(line for line in narrow.splitlines() if "4 outdoor_sport_climbing" in line)
    assert [c.strip() for c in row.split("│")[2:6]] == ["·", "·", "2", "30"]  # counts under numbered columns
    header = next(line for line in wide.splitlines() if line.startswith("┃"))
    assert all(c in header for c in classes) and "4 outdoor" not in wide  # full names across when they fit

    # Ten short names (the digits demo) fit 80 columns exactly: names across, nothing folded.
    digits = ["eight", "five", "four", "nine", "one", "seven", "six", "three", "two", "zero"]
    metrics = {"classes": digits, "confusion_matrix": (np.eye(10, dtype=int) * 40).tolist()}
    text = shown(80)
    header = next(line for line in text.splitlines() if line.startswith("┃"))
    assert all(f" {d} " in header for d in digits) and max(map(len, text.splitlines())) <= 80
    assert "Confusion matrix (rows: actual, columns: predicted)" in text  # the title on one line


def test_many_classes_summarise_instead_of_flooding_the_console():
    """200 classes (birds): the summary's per-class table shows the weakest, and a matrix that
    cannot fit even with numbered columns becomes the list of the most frequent confusions."""
    from rich.console import Console

    from vistrain.evaluation.metrics import classification_metrics
    from vistrain.evaluation.render import confusion_table, per_class_table

    k = 200
    classes = [f"species_{i:03d}" for i in range(k)]
    y_true = np.repeat(np.arange(k), 3)
    y_pred = y_true.copy()
    y_pred[[3 * 17, 3 * 17 + 1]] = 42  # both of the first two of species 17 taken for 42
    y_pred[3 * 150] = 151
    metrics = classification_metrics(y_true, y_pred, classes)

    def shown(table, width=100):
        console = Console(width=width, record=True, force_terminal=False)
        console.print(table)
        return console.export_text()

    text = shown(confusion_table(metrics, width=100, full_at="RUN/metrics.json"))
    assert "Most frequent confusions (200 classes" in " ".join(text.split()) and "RUN/metrics.json" in text
    rows = [line for line in text.splitlines() if "species_" in line]
    assert [c.strip() for c in rows[0].split("│")[1:5]] == ["species_017", "species_042", "2", "67%"]
    assert len(rows) == 2 and "species_150" in rows[1] and "33%" in rows[1]
    assert max(map(len, text.splitlines())) <= 100
    # Few classes still get the matrix itself (numbered when names are long).
    assert "Most frequent" not in shown(confusion_table(classification_metrics(y_true[:30], y_pred[:30], classes[:10]),
                                                        width=100))

    text = shown(per_class_table(metrics, "Validation, per class", limit=20, full_at="RUN/metrics.json"))
    listed = [line.split("│")[1].strip() for line in text.splitlines() if "species_" in line]
    assert listed[:3] == ["species_017", "species_042", "species_150"]  # weakest first
    assert len(listed) == 20 and "the 20 weakest of 200 classes" in " ".join(text.split())
    assert "… 180 more" in text and "macro average" in text
    full = shown(per_class_table(metrics, "per class"))  # evaluate's: every class, in class order
    assert [line.split("│")[1].strip() for line in full.splitlines() if "species_" in line] == classes


def test_predict_into_a_csv_shows_a_few_rows_and_the_counts(trained, tmp_path, capsys):
    """Thousands of answers going to a CSV: the screen shows the first 20 and what they add up to."""
    from conftest import write_class_folders

    _, run = trained
    many = write_class_folders(tmp_path / "many", per_class=12, start=300)  # 36 images
    (many / "notes.txt").write_text("not an image")
    assert main(["predict", str(run), str(many), "--csv", str(tmp_path / "p.csv")]) == 1  # one broken file
    out = capsys.readouterr().out
    with (tmp_path / "p.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 37 and sum(1 for line in out.splitlines() if ".png" in line or ".txt" in line) == 20
    assert f"…17morerow(s):all37arein{tmp_path / 'p.csv'}" in "".join(out.split())  # however rich folds the path
    answers = next(line for line in out.splitlines() if line.startswith("answers: "))
    labels = [r["label"] for r in rows if not r["error"] and r["unsure"] == "false" and r["familiar"] != "false"]
    top = max(set(labels), key=lambda c: (labels.count(c), [-ord(ch) for ch in c]))
    assert answers.startswith(f"answers: {top} {labels.count(top)}") and answers.endswith("failed 1")
    # Without --csv or --into the screen is the only output: every row is shown.
    assert main(["predict", str(run), str(many)]) == 1
    assert sum(1 for line in capsys.readouterr().out.splitlines() if ".png" in line) == 36


def _changed_run(run: Path, folder: Path, **config) -> Path:
    """A copy of ``run`` whose config.json has ``config`` instead (classes renamed, another threshold)."""
    shutil.copytree(run, folder)
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **config}, indent=2))
    return folder


def test_predict_says_when_the_runs_threshold_makes_most_answers_unsure(trained, tmp_path, capsys):
    """The digits run's threshold (0.9868, set on 30 validation images) made all 11 answers "unsure":
    one line says so and how to change it. A threshold typed with --unsure is the user's own."""
    data, run = trained
    strict = _changed_run(run, tmp_path / "strict", unsure_threshold=0.999999)
    assert main(["predict", str(strict), str(data)]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert "24 of the 24 answers are 'unsure': below the run's threshold 0.999999" in said
    assert "--unsure P" in said and "--unsure 0 turns it off" in said
    assert main(["predict", str(strict), str(data), "--unsure", "0.999999"]) == 0
    assert "--unsure P" not in " ".join(capsys.readouterr().out.split())
    assert main(["predict", str(run), str(data)]) == 0  # the shared run: few or no answers unsure
    assert "--unsure P" not in " ".join(capsys.readouterr().out.split())
    few = tmp_path / "few"
    few.mkdir()
    for p in sorted((data / "stripes").glob("*.png"))[:4]:
        shutil.copy(p, few / p.name)
    assert main(["predict", str(strict), str(few)]) == 0  # four answers are too few to judge a threshold by
    assert "--unsure P" not in " ".join(capsys.readouterr().out.split())


def test_predict_counts_unsure_answers_apart_from_a_class_named_unsure(trained, tmp_path, capsys):
    """With a class named "unsure", --into copies low-confidence answers into "unsure (vistrain)/";
    the counts line calls them that too, or "unsure 8" could be the class."""
    data, run = trained
    renamed = _changed_run(run, tmp_path / "renamed", classes=["circles", "squares", "unsure"],
                           unsure_threshold=0.999999)
    assert main(["predict", str(renamed), str(data), "--into", str(tmp_path / "sorted")]) == 0
    answers = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("answers: "))
    assert answers == "answers: unsure (vistrain) 24"
    assert [p.name for p in (tmp_path / "sorted").iterdir() if p.is_dir()] == ["unsure (vistrain)"]


def test_answer_counts_name_flags_apart_from_classes_of_the_same_name():
    from vistrain.commands.predict import answer_counts

    def row(label, unsure=False):
        return {"label": label, "unsure": unsure, "familiar": None}

    rows = [row("seven"), row("seven"), row("unsure"), row("one", unsure=True), row(None)]
    assert answer_counts(rows, ["one", "seven", "unsure"]) == "seven 2, unsure 1, unsure (vistrain) 1, failed 1"
    assert answer_counts(rows, ["one", "seven", "unsure", "failed"]) == (
        "seven 2, unsure 1, unsure (vistrain) 1, failed (vistrain) 1")
    assert answer_counts(rows, ["one", "seven"]) == "seven 2, unsure 1, unsure 1, failed 1"  # no such class


def test_predictions_table_keeps_long_class_names_whole_in_80_columns():
    from rich.console import Console

    from vistrain.evaluation.render import predictions_table

    classes = ["outdoor_sport_climbing", "outdoor_trad_climbing", "indoor_bouldering"]
    rows = [{"path": f"photos/2026/trip/{name}_{i}.jpg", "label": classes[i], "probability": 0.9, "unsure": i == 2,
             "top": [(classes[i], 0.9), (classes[i - 1], 0.07), (classes[i - 2], 0.03)], "error": None}
            for i, name in enumerate(["a_rather_long_file_name", "b", "c"])]
    rows.append({"path": "photos/2026/trip/broken.jpg", "label": None, "probability": None, "unsure": False,
                 "top": [], "error": "not an image [truncated]"})
    console = Console(width=80, record=True, force_terminal=False)
    console.print(predictions_table(rows, 3, width=80))
    text = console.export_text()
    assert max(map(len, text.splitlines())) <= 80
    assert text.startswith("in photos/2026/trip") and "photos/2026" not in text[20:]
    for i, line in enumerate(classes):
        assert f"{line} 90.0%" in text  # the answer is never cut, whatever the width
    assert "(unsure)" in text and "not an image [truncated]" in text  # markup-like text printed as is
    assert "outdoor_trad_climbing 7.0%" in text  # runners-up under the answer


def test_predict_json_to_stdout(trained, capsys):
    data, run = trained
    assert main(["predict", str(run), str(data / "stripes" / "stripes_0.png"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["label"] == "stripes" and len(rows[0]["top"]) == 3
    assert abs(sum(p for _, p in rows[0]["top"]) - 1.0) < 1e-5


@pytest.mark.parametrize("argv, fragment", [
    (["train", "/nonexistent/photos"], "/nonexistent/photos: no such file or folder"),
    (["predict", "/nonexistent/run", "x.jpg"], "/nonexistent/run"),
    (["train", ".", "--backbone", "vgg16"], "unknown backbone 'vgg16'"),
    # Brackets in a path are text, not a console style tag to swallow.
    (["train", "/nonexistent/photos [old]"], "/nonexistent/photos [old]: no such file or folder"),
])
def test_errors_are_one_clear_line_and_exit_2(argv, fragment, capsys):
    assert main(argv) == 2
    out = capsys.readouterr().out
    assert "error:" in out and fragment in out.replace("\n", "")


@pytest.mark.parametrize("command", ["evaluate", "report"])
def test_help_says_a_flat_folder_named_by_class_needs_no_regex(command, capsys, monkeypatch):
    """circles_1.jpg, squares_2.jpg: evaluate and report find the model's class names in the file
    names; --label-from-name is for other names."""
    monkeypatch.setenv("COLUMNS", "400")  # argparse would break "--label-from-name" at its hyphens
    with pytest.raises(SystemExit):
        main([command, "--help"])
    said = " ".join(capsys.readouterr().out.split())
    assert "a flat folder whose file names start with a class name (else --label-from-name)" in said


def test_console_script_is_installed():
    result = subprocess.run([sys.executable, "-m", "vistrain", "--version"], capture_output=True, text=True, check=False)
    assert result.returncode == 0 and result.stdout.startswith("vistrain ")


def test_metrics_match_scikit_learn():
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    p[:5] = 0  # class 3 never predicted for some rows: zero-division handling matters
    m = classification_metrics(y, p, ["a", "b", "c", "d"])
    prec, rec, f1, sup = precision_recall_fscore_support(y, p, labels=[0, 1, 2, 3], zero_division=0)
    for i, c in enumerate("abcd"):
        assert m["per_class"][c]["precision"] == pytest.approx(prec[i])
        assert m["per_class"][c]["recall"] == pytest.approx(rec[i])
        assert m["per_class"][c]["f1"] == pytest.approx(f1[i])
        assert m["per_class"][c]["support"] == sup[i]
    assert m["confusion_matrix"] == confusion_matrix(y, p).tolist()
    assert m["accuracy"] == pytest.approx((y == p).mean())


@pytest.mark.parametrize("exc, said", [
    (OSError(28, "No space left on device", "runs/r/model.safetensors"),
     "no space left on the disk (writing runs/r/model.safetensors). `vistrain cache` shows"),
    (RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"),  # safetensors' own
     "no space left on the disk (Error while serializing: I/O error: No space left on device (os error 28))"),
    (PermissionError(13, "Permission denied", "/runs"), "permission denied: /runs"),
])
def test_a_full_disk_is_a_clear_error_not_a_traceback(trained, tmp_path, capsys, monkeypatch, exc, said):
    import vistrain.api

    data, _ = trained

    def fails(*args, **kwargs):
        raise exc

    monkeypatch.setattr(vistrain.api, "train", fails)
    assert main(["train", str(data), "--out", str(tmp_path / "r")]) == 2
    assert said in " ".join(capsys.readouterr().out.split())


def test_a_bug_still_shows_its_traceback(trained, tmp_path, monkeypatch):
    import vistrain.api

    def fails(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(vistrain.api, "train", fails)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["train", str(trained[0]), "--out", str(tmp_path / "r")])


def test_file_names_with_brackets_print_whole(trained, tmp_path, capsys):
    data, run = trained
    photos = tmp_path / "photos [old]"
    shutil.copytree(data, photos)
    (photos / "stripes" / "scan [edited].png").write_bytes(b"not a png")
    assert main(["evaluate", str(run), str(photos)]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert "skipped " + str(photos / "stripes" / "scan [edited].png") in said
    assert "[old]: per class" in said  # the table title (wrapped where the path is long)


def test_predict_names_its_csv_whole_and_answers_for_a_file_whose_name_is_not_utf8(trained, tmp_path, capsys):
    data, run = trained
    photos = tmp_path / "new"
    photos.mkdir()
    good = min((data / "stripes").glob("*.png"))
    shutil.copy(good, photos / good.name)
    odd = os.fsencode(photos) + b"/caf\xe9.png"  # a name from an old Windows zip: Latin-1, not UTF-8
    shutil.copy(good, odd)
    out = tmp_path / "out[/]x.csv"  # "[/]" is a closing tag to rich: it raised after writing the CSV
    assert main(["predict", str(run), str(photos), "--csv", str(out)]) == 1  # one file not answered
    said = " ".join(capsys.readouterr().out.split())
    assert f"CSV written to {out}" in said
    with out.open(encoding="utf-8", newline="") as f:
        rows = {r["path"]: r for r in csv.DictReader(f)}
    assert rows[str(photos / good.name)]["label"] == "stripes"
    named = rows[str(photos) + "/caf\\udce9.png"]  # as the screen shows it, so the CSV stays UTF-8
    assert named["label"] == "" and named["error"] == "file name is not valid UTF-8 (rename the file)"


@pytest.mark.parametrize("top_k, unsure, said", [
    (0, None, "top_k 0 must be a whole number, at least 1"),  # raised IndexError from inside numpy
    (-2, None, "top_k -2 must be"),  # silently sliced from the end: all but two classes
    (3, 1.5, "unsure 1.5 must be a probability"),  # silently made every answer unsure
    (3, -1.0, "unsure -1.0 must be a probability"),  # silently turned the threshold off
])
def test_the_python_api_refuses_answer_options_the_cli_refuses(trained, top_k, unsure, said):
    import vistrain

    data, run = trained
    with pytest.raises(ValueError, match=said):
        vistrain.load(run).predict(data, top_k=top_k, unsure=unsure)


@pytest.mark.parametrize("flag, value, said", [
    ("--unsure", "1", "--unsure 1.0 must be a probability from 0 (never unsure) to below 1"),
    ("--top-k", "0", "--top-k 0 must be a whole number, at least 1"),
])
def test_predict_flags_out_of_range_are_one_clear_line(trained, capsys, flag, value, said):
    assert main(["predict", str(trained[1]), str(trained[0]), flag, value]) == 2
    assert said in " ".join(capsys.readouterr().out.split())

"""``evaluate`` and ``report`` at the edges: classes with no images (undefined metrics are null, not
0), a folder with a class the model never saw (the rest scored, the stranger named), a run whose
class names are decomposed Unicode (NFD) scored on folders named in NFC, and one with two classes
that differ only in that (never merged)."""

from __future__ import annotations

import csv
import json
import re
import shutil
import unicodedata
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import make_image, write_class_folders
from rich.console import Console

import vistrain
from vistrain.cli import main
from vistrain.evaluation.intervals import metrics_with_intervals
from vistrain.evaluation.metrics import classification_metrics
from vistrain.evaluation.render import per_class_table, worst_classes


def _shown(table) -> str:
    console = Console(width=200, record=True)
    console.print(table)
    return " ".join(console.export_text().replace("│", " ").split())


# Class 2 ("c") has no images; class 1 ("b") has images but is never predicted.
Y_TRUE = np.array([0, 0, 0, 1, 1, 3, 3, 3])
Y_PRED = np.array([0, 0, 3, 0, 3, 3, 3, 2])
CLASSES = ["a", "b", "c", "d"]


def test_undefined_metrics_are_none_and_the_averages_skip_them():
    from sklearn.metrics import f1_score, precision_recall_fscore_support

    m = classification_metrics(Y_TRUE, Y_PRED, CLASSES)
    pc = m["per_class"]
    # No images of c: its recall and F1 are 0/0. It was predicted once, wrongly: precision 0, defined.
    assert pc["c"] == {"precision": 0.0, "recall": None, "f1": None, "support": 0}
    # b has images but is never predicted: no precision; it missed both, so recall and F1 are 0.
    assert pc["b"] == {"precision": None, "recall": 0.0, "f1": 0.0, "support": 2}
    prec, rec, _, _ = precision_recall_fscore_support(Y_TRUE, Y_PRED, labels=[0, 1, 2, 3], zero_division=np.nan)
    for i, c in enumerate(CLASSES):
        for key, want in (("precision", prec[i]), ("recall", rec[i])):
            assert (pc[c][key] is None) == bool(np.isnan(want)), (c, key)
            if pc[c][key] is not None:
                assert pc[c][key] == pytest.approx(want)
    # The averages are over the defined values only, as scikit-learn's with zero_division=nan.
    assert m["macro_avg"]["precision"] == pytest.approx(np.nanmean(prec))  # a, c, d
    assert m["macro_avg"]["recall"] == pytest.approx(np.nanmean(rec))  # a, b, d
    assert m["macro_avg"]["f1"] == pytest.approx(f1_score(Y_TRUE, Y_PRED, labels=[0, 1, 3], average="macro"))
    assert json.loads(json.dumps(m))["per_class"]["c"]["recall"] is None  # JSON null


def test_intervals_and_weighted_averages_leave_undefined_values_out():
    m = metrics_with_intervals(classification_metrics(Y_TRUE, Y_PRED, CLASSES), Y_TRUE, Y_PRED)
    pc = m["per_class"]
    assert pc["c"]["recall_ci"] is None and pc["c"]["f1_ci"] is None and pc["c"]["precision_ci"] is not None
    assert pc["b"]["precision_ci"] is None and pc["b"]["recall_ci"] is not None
    # Precision, weighted by support over the classes that have it: a (3 images) and d (3); b is undefined.
    want = (3 * pc["a"]["precision"] + 3 * pc["d"]["precision"]) / 6
    assert m["weighted_avg"]["precision"] == pytest.approx(want)
    assert m["weighted_avg"]["recall"] == pytest.approx(m["accuracy"])  # support-weighted recall is accuracy


def test_table_shows_undefined_as_n_a_and_ranks_them_after_measured_classes():
    m = classification_metrics(Y_TRUE, Y_PRED, CLASSES)
    text = _shown(per_class_table(m, "per class"))
    assert "c 0.0% n/a n/a 0" in text and "b n/a 0.0% 0.000 2" in text
    assert "no recall or F1 for a class with no images here (1 of 4)" in text
    # The weakest first: b (F1 0) before the others; c, unmeasured, is no weak class.
    short = _shown(per_class_table(m, "per class", limit=2))
    assert "b n/a 0.0% 0.000 2" in short and "c 0.0%" not in short and "… 2 more" in short
    assert worst_classes(m, 4) == ["b", "d", "a"]
    # An older run's metrics.json (0.0 where now null) still renders, with no note about n/a.
    old = json.loads(json.dumps(m).replace("null", "0.0"))
    assert "n/a" not in _shown(per_class_table(old, "per class"))


def test_model_card_copes_with_a_class_without_validation_images():
    from vistrain.export.card import _limits, _quality

    valid = classification_metrics(Y_TRUE, Y_PRED, CLASSES)
    info = SimpleNamespace(classes=CLASSES, backbone="resnet18", default="fp32", extra={}, unsure_threshold=None,
                           temperature=1.0, models={"fp32": {"file": "model.onnx", "valid_accuracy": 0.5,
                                                             "top1_agreement_with_pytorch": 1.0, "bytes": 1e6,
                                                             "latency_ms_1_thread": 1.0}})
    text = "\n".join(_quality(info, {"valid": valid}, {}))
    assert "| `c` | 0.0% | – | – | 0 |" in text and "| `b` | – | 0.0% | 0.00 | 2 |" in text
    limits = "\n".join(_limits(info, {"valid": valid}, {}, {}))
    assert "weakest class on validation is `b` (F1 0.00" in limits


@pytest.fixture
def extra_class(tmp_path):
    """Known circles and squares (2 each, no stripes), plus 3 images of a class the model never saw."""
    data = write_class_folders(tmp_path / "photos", per_class=2, classes=("circles", "squares"), start=400)
    (data / "triangles").mkdir()
    for i in range(3):
        make_image("squares", 4500 + i).save(data / "triangles" / f"t{i}.png")
    return data


def test_evaluate_scores_the_known_classes_and_names_the_unknown_one(trained_run, extra_class, capsys):
    run, _ = trained_run
    m = vistrain.evaluate(run, extra_class, cache_dir=False)
    assert m["n"] == 4 and m["unknown_labels"] == {"triangles": 3}
    assert sum(m["unknown_predicted"]["triangles"].values()) == 3
    assert set(m["unknown_predicted"]["triangles"]) <= {"circles", "squares", "stripes"}
    assert m["per_class"]["stripes"]["recall"] is None and m["per_class"]["stripes"]["support"] == 0
    assert "triangles" not in m["per_class"]

    assert main(["evaluate", str(run), str(extra_class), "--json", "--no-cache"]) == 0
    j = json.loads(capsys.readouterr().out)
    assert j["unknown_labels"] == {"triangles": 3} and j["per_class"]["stripes"]["f1"] is None

    assert main(["evaluate", str(run), str(extra_class), "--no-cache"]) == 0
    out = " ".join(capsys.readouterr().out.replace("│", " ").split())
    predicted = ", ".join(f"{c} {n}" for c, n in m["unknown_predicted"]["triangles"].items())
    assert (f"note: not scored, 3 images with a label the model does not know: triangles (3 images: "
            f"predicted {predicted})") in out
    assert re.search(r"stripes (n/a|0\.0%) n/a n/a 0 ", out)  # no stripes here: no recall, no F1
    assert f"({m['n'] - m['errors']} of 4 right" in out


def test_an_export_scores_the_known_classes_and_counts_the_unknown_one(exported_run, extra_class):
    from vistrain.runtime.files import evaluate_export

    m = evaluate_export(exported_run, extra_class, cache_dir=False, variant="fp32")
    assert m["n"] == 4 and m["unknown_labels"] == {"triangles": 3}
    assert sum(m["unknown_predicted"]["triangles"].values()) == 3  # what the export calls them, as a run's
    assert m["per_class"]["stripes"]["f1"] is None


def test_a_scored_image_that_fails_after_the_scan_is_an_error_not_class_0(trained_run, tmp_path):
    from vistrain.evaluation.labelled import labelled_index, predict_labelled
    from vistrain.progress import SilentReporter

    run = vistrain.load(trained_run[0], "cpu")
    data = write_class_folders(tmp_path / "photos", per_class=2, classes=("circles", "squares"), start=700)
    index, _ = labelled_index(data, None, False, run.classes, SilentReporter())
    broken = index.records[-1].path
    Path(broken).write_bytes(b"not an image any more")  # changed between the scan and the prediction
    with pytest.raises(ValueError, match=re.escape(broken) + ".*changed since it was scanned"):
        predict_labelled(run.predictor.outputs_from_paths, index, SilentReporter(), False)


def test_a_folder_with_no_known_label_is_refused_naming_what_it_found(trained_run, tmp_path, capsys):
    run, _ = trained_run
    data = tmp_path / "strangers"
    for name, n in (("dogs", 2), ("cats", 1)):
        (data / name).mkdir(parents=True)
        for i in range(n):
            make_image("circles", 4600 + 10 * len(name) + i).save(data / name / f"{i}.png")
    assert main(["evaluate", str(run), str(data), "--no-cache"]) == 2
    out = " ".join(capsys.readouterr().out.split())
    assert "no image has a label the model knows; found cats (1 image), dogs (2 images)" in out
    assert "model classes: circles, squares, stripes" in out


def test_report_scores_the_known_classes_and_names_the_unknown_one(trained_run, extra_class, tmp_path, capsys):
    run = shutil.copytree(trained_run[0], tmp_path / "run")  # the report writes into the run
    assert main(["report", str(run), str(extra_class), "--no-cache"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "note: not scored, 3 images with a label the model does not know: triangles (3 images: predicted" in out
    page = (run / "report.html").read_text()
    assert 'class="warn">Not scored, 3 images with a label the model does not know: triangles' in page
    assert "4 images; 3 more with a label the model does not know, not scored" in page
    assert "No images here of stripes: no recall or F1 for it." in page
    # The errors folder holds scored images only: nothing from triangles/.
    assert not list((run / "errors").rglob("t?.png"))


def _nfd_run(trained_run, tmp_path, name: str):
    """A copy of the shared run whose class "squares" is ``name`` spelt decomposed (NFD), as a run
    trained on a Mac's folders before vistrain normalised labels."""
    run = shutil.copytree(trained_run[0], tmp_path / "nfd-run")
    config = json.loads((run / "config.json").read_text())
    nfd = unicodedata.normalize("NFD", name)
    assert nfd != name  # the test means something only if the spellings differ
    config["classes"] = [nfd if c == "squares" else c for c in config["classes"]]
    (run / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return run, nfd


def test_a_run_with_nfd_class_names_scores_nfc_folders(trained_run, tmp_path):
    name = "carré"
    run, nfd = _nfd_run(trained_run, tmp_path, name)
    before = (run / "config.json").read_bytes()
    data = write_class_folders(tmp_path / "photos", per_class=2, classes=("circles", "squares"), start=500)
    (data / "squares").rename(data / name)  # NFC, as the scan normalises it anyway
    m = vistrain.evaluate(run, data, cache_dir=False)
    assert m["unknown_labels"] == {}
    assert m["n"] == 4 and m["per_class"][nfd]["support"] == 2  # keyed by the model's own spelling
    assert (run / "config.json").read_bytes() == before  # the user's run is read, never rewritten


def test_report_of_a_run_with_nfd_class_names_on_nfc_folders(trained_run, tmp_path, capsys):
    name = "carré"
    run, nfd = _nfd_run(trained_run, tmp_path, name)
    data = write_class_folders(tmp_path / "photos", per_class=1, classes=("circles", "squares"), start=600)
    (data / "squares").rename(data / name)
    assert main(["report", str(run), str(data), "--no-cache"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "does not know" not in out and "(2 images)" in out
    # Its row, under the model's own spelling, counts the NFC folder's image.
    assert re.search(rf"<tr><td>{nfd}</td>.*?<td>1</td></tr>", (run / "report.html").read_text())


CAFE = "caf\u00e9"  # composed (NFC)
CAFE_NFD = unicodedata.normalize("NFD", CAFE)


def _twin_run(trained_run, tmp_path):
    """A copy of the shared run whose classes squares and stripes are "café" spelt composed and
    decomposed: a run trained before labels were normalised, on two folders that Linux kept apart.
    Its split.csv spells its labels as its classes, as training wrote it."""
    run = shutil.copytree(trained_run[0], tmp_path / "twin-run")
    rename = {"squares": CAFE, "stripes": CAFE_NFD}
    config = json.loads((run / "config.json").read_text())
    config["classes"] = [rename.get(c, c) for c in config["classes"]]
    (run / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    with (run / "split.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    with (run / "split.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows({**r, "label": rename.get(r["label"], r["label"])} for r in rows)
    return run


def test_classes_that_differ_only_in_unicode_form_are_never_merged(trained_run, tmp_path, capsys):
    run = _twin_run(trained_run, tmp_path)
    data = write_class_folders(tmp_path / "photos", per_class=2, classes=("circles", "squares", "stripes"), start=800)
    (data / "squares").rename(data / CAFE)
    (data / "stripes").rename(data / CAFE_NFD)
    assert sorted(p.name for p in data.iterdir()) == sorted(["circles", CAFE, CAFE_NFD])  # two folders on disk
    # The scan reads both folders' label as NFC "café": scored, one class would take the other's images.
    with pytest.raises(ValueError) as refused:
        vistrain.evaluate(run, data, cache_dir=False)
    said = str(refused.value)
    assert said.startswith(f"{data}: images labelled 'café' could be any of the model's classes 'caf\\xe9' and "
                           f"'cafe\\u0301', which differ only in Unicode normalisation"), said
    assert main(["report", str(run), str(data), "--no-cache"]) == 2
    assert "'caf\\xe9' and 'cafe\\u0301'" in " ".join(capsys.readouterr().out.split())
    # Without images of that name there is nothing to merge: the rest is scored.
    shutil.rmtree(data / CAFE)
    shutil.rmtree(data / CAFE_NFD)
    make_image("squares", 4700).save(data / "circles" / "odd_square.png")
    m = vistrain.evaluate(run, data, cache_dir=False)
    assert m["n"] == 3 and m["per_class"][CAFE]["support"] == m["per_class"][CAFE_NFD]["support"] == 0


def test_report_on_the_validation_split_tells_such_classes_apart(trained_run, tmp_path):
    from vistrain.evaluation.report import write_report

    run = _twin_run(trained_run, tmp_path)
    with (run / "split.csv").open(newline="") as f:
        want = Counter(r["label"] for r in csv.DictReader(f) if r["split"] == "valid")
    assert want[CAFE] and want[CAFE_NFD]  # the test means something only if both are there
    # split.csv spells each image's label as the run spells the class: matched exactly, each keeps its own.
    _, a = write_report(run)
    assert {c: a.metrics["per_class"][c]["support"] for c in (CAFE, CAFE_NFD)} == {CAFE: want[CAFE],
                                                                                 CAFE_NFD: want[CAFE_NFD]}

"""``vistrain report``: the HTML page in a real browser, the errors folder, refitted confidence settings."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
from conftest import make_image, write_class_folders

from vistrain.cli import main

SECTIONS = ["data", "audit", "training", "metrics", "errors", "heatmaps", "calibration", "abstention"]


def _digest(folder):
    return {p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def run_copy(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run[0], run)
    return run


@pytest.fixture
def mislabelled(tmp_path):
    """Two images per class, plus a circle filed under 'squares': one certain error."""
    data = write_class_folders(tmp_path / "eval", per_class=2, start=300)
    make_image("circles", 777).save(data / "squares" / "odd_circle.png")
    return data


def test_report_page_in_a_browser(run_copy, mislabelled, browser, capsys):
    (run_copy / "audit.json").write_text(json.dumps({"version": 1, "data": "photos", "summary": {"duplicate": 1},
        "findings": [{"kind": "duplicate", "severity": "warning", "message": "2 identical files",
                      "files": ["a.png", "b.png"], "score": 1.0}]}))
    before = _digest(mislabelled)
    assert main(["report", str(run_copy), str(mislabelled), "--tta"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "Report written" in out and "calibration error" in out and "1 error(s)" in out

    page = browser.new_page(viewport={"width": 1200, "height": 900})
    try:
        page.goto((run_copy / "report.html").as_uri())
        ids = page.eval_on_selector_all("section", "els => els.map(e => e.id)")
        assert [s for s in SECTIONS if s not in ids] == []
        assert "tta" in ids
        images = page.eval_on_selector_all("img", "els => els.map(e => [e.alt, e.naturalWidth, e.src.slice(0, 11)])")
        assert len(images) >= 8 and all(w > 0 for _, w, _ in images), images
        assert all(src.startswith("data:image") for _, _, src in images)  # self-contained
        errors = page.inner_text("#errors")
        assert "circles / squares" in errors and "odd_circle.png" in errors  # predicted / actual, fastai's order
        assert page.eval_on_selector_all("#errors figure img", "els => els.length") == 1
        # Two correct examples per class (every other image was right), photo and heat map side by side.
        tiles = page.eval_on_selector_all("#heatmaps figure img", "els => els.map(e => [e.naturalWidth, e.naturalHeight])")
        n_classes = len([d for d in mislabelled.iterdir() if d.is_dir()])
        assert tiles == [[480, 240]] * (2 * n_classes)
        assert "duplicate" in page.inner_text("#audit")
        assert "[" in page.inner_text("#metrics")  # confidence intervals shown
    finally:
        page.close()
    assert _digest(mislabelled) == before  # copies, never moves
    copied = run_copy / "errors" / "squares" / "circles" / "odd_circle.png"
    assert copied.read_bytes() == (mislabelled / "squares" / "odd_circle.png").read_bytes()
    # A second report replaces its own earlier copy; a file someone changed stays, and the copy gets a suffix.
    assert main(["report", str(run_copy), str(mislabelled)]) == 0
    assert [p.name for p in copied.parent.iterdir()] == ["odd_circle.png"]
    copied.write_bytes(b"someone else's file")
    assert main(["report", str(run_copy), str(mislabelled)]) == 0
    assert sorted(p.name for p in copied.parent.iterdir()) == ["odd_circle.png", "odd_circle_1.png"]
    assert copied.read_bytes() == b"someone else's file"
    # A report on other images holds their errors only: the earlier report's copies are gone.
    (mislabelled / "squares" / "odd_circle.png").unlink()
    make_image("squares", 778).save(mislabelled / "circles" / "odd_square.png")
    assert main(["report", str(run_copy), str(mislabelled)]) == 0
    assert sorted(p.relative_to(run_copy / "errors").as_posix() for p in (run_copy / "errors").rglob("*.png")) == [
        "circles/squares/odd_square.png", "squares/circles/odd_circle.png"]  # the changed file is not ours to remove


def test_report_on_validation_refits_and_stores(run_copy, capsys):
    assert main(["report", str(run_copy), "--target-precision", "0.9", "--top-losses", "4"]) == 0
    assert "fitted here and stored in the run" in " ".join(capsys.readouterr().out.split())  # rich wraps lines
    cfg = json.loads((run_copy / "config.json").read_text())
    assert cfg["calibration"]["target_precision"] == 0.9 and cfg["calibration"]["fitted_on"] == "validation"
    html = (run_copy / "report.html").read_text()
    assert 'id="abstention"' in html and "target 90%" in html
    assert ('id="audit"' in html) == (run_copy / "audit.json").exists()


def test_report_says_a_temperature_it_did_not_apply_was_not_applied():
    """It printed "17.7% -> 17.7% with temperature 1.00 (fitted here and stored in the run); 1.09
    fitted, not applied": which temperature was fitted here?"""
    from vistrain.commands.report import calibration_line

    kept = {"temperature": 1.0, "fitted_temperature": 1.09, "ece_before": 0.177, "ece_after": 0.177, "n": 30,
            "heldout_nll_raw": 0.61, "heldout_nll_scaled": 0.63}
    assert calibration_line(kept, 1.0, fitted_here=True) == (
        "calibration error 17.7%; temperature kept at 1.00 (stored in the run); 1.09 fitted here, not applied: "
        "it did not lower the held-out log-loss")
    few = {**kept, "heldout_nll_raw": None, "heldout_nll_scaled": None, "n": 9}
    assert calibration_line(few, 1.0, fitted_here=True).endswith(
        "1.09 fitted here, not applied: too few images (fewer than 10) to check it on held-out ones")
    applied = {**kept, "temperature": 1.3, "fitted_temperature": 1.3, "ece_after": 0.05, "heldout_nll_scaled": 0.5}
    assert calibration_line(applied, 1.3, fitted_here=True) == (
        "calibration error 17.7% -> 5.0% with temperature 1.30 (fitted here and stored in the run)")
    on_data = {k: applied[k] for k in ("temperature", "ece_before", "ece_after", "n")}
    assert calibration_line(on_data, 1.3, fitted_here=False) == (
        "calibration error 17.7% -> 5.0% with temperature 1.30 (the run's, fitted on validation)")


@pytest.mark.parametrize("argv, fragment", [
    (["--target-precision", "1.5"], "target precision 1.5"),
    (["--top-losses", "0"], "top losses 0"),
])
def test_report_rejects_bad_settings(run_copy, capsys, argv, fragment):
    assert main(["report", str(run_copy), *argv]) == 2
    assert fragment in capsys.readouterr().out


def test_report_names_unknown_labels(run_copy, tmp_path, capsys):
    data = write_class_folders(tmp_path / "other", per_class=1, classes=("circles",))
    (data / "triangles").mkdir()
    make_image("squares", 5).save(data / "triangles" / "t.png")
    # The known class is scored; the unknown one is named, not scored.
    assert main(["report", str(run_copy), str(data)]) == 0
    assert "a label the model does not know: triangles (1 image" in " ".join(capsys.readouterr().out.split())
    # With no image of a class the model knows, there is nothing to report on.
    shutil.rmtree(data / "circles")
    assert main(["report", str(run_copy), str(data)]) == 2
    assert "no image has a label the model knows; found triangles (1 image)" in " ".join(capsys.readouterr().out.split())


def test_errors_folder_list_never_reaches_outside_it(tmp_path):
    """The list of earlier copies is a file anyone can edit: a path in it that leads out of errors/
    removes nothing, even a file of exactly the listed size and time."""
    from vistrain.evaluation.report import COPIES_FILE, _remove_earlier_copies

    (tmp_path / "errors").mkdir()
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"a user's photo")
    st = photo.stat()
    listed = {rel: [st.st_size, st.st_mtime_ns] for rel in ("../photo.jpg", "a/../../photo.jpg", str(photo))}
    (tmp_path / "errors" / COPIES_FILE).write_text(json.dumps({"files": listed}))
    _remove_earlier_copies(tmp_path / "errors")
    assert photo.read_bytes() == b"a user's photo"


def test_report_on_the_training_folder_says_it_is_optimistic(run_copy, trained_run, mislabelled, capsys):
    assert main(["report", str(run_copy), str(trained_run[1])]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "Of these 30 images, 24 trained it and 6 chose its settings" in out and "None of them is new" in out
    html = (run_copy / "report.html").read_text()
    assert 'class="warn">Of these 30 images' in html and "30 of which the run has seen" in html
    # New images only: nothing to say, and calibration is judged on images the run never saw.
    assert main(["report", str(run_copy), str(mislabelled)]) == 0
    assert "optimistic" not in capsys.readouterr().out
    assert "judged here on images it never saw" in (run_copy / "report.html").read_text()


def test_confusion_plot_of_many_classes_shows_the_part_around_the_errors():
    import base64
    import io
    import re

    import numpy as np
    from PIL import Image

    from vistrain.evaluation.metrics import most_confused
    from vistrain.evaluation.report import MATRIX_CLASSES, _confusion_plot

    k = 150
    cm = np.diag(np.full(k, 4))
    cm[120, 120], cm[120, 7] = 1, 3  # species 120 mostly taken for 7
    cm[33, 33], cm[33, 140] = 3, 1
    involved = most_confused(cm, MATRIX_CLASSES)
    assert len(involved) == MATRIX_CLASSES and {7, 33, 120, 140} <= set(involved) and involved == sorted(involved)
    assert most_confused(cm, 2) == [7, 120]  # 3 errors each way beat 33 and 140's one

    html = _confusion_plot(cm, [f"species_{i:03d}" for i in range(k)])
    assert f"the {MATRIX_CLASSES} classes most involved in errors, of {k}" in html
    png = base64.b64decode(re.search(r"base64,([^\"]+)", html).group(1))
    w, h = Image.open(io.BytesIO(png)).size
    # Drawn whole, 150 classes made 13950 x 6950 pixels (past Pillow's decompression-bomb limit).
    assert w * h < 6e6
    small = _confusion_plot(cm[:10, :10], [f"c{i}" for i in range(10)])
    assert "most involved" not in small and "base64," in small


def test_class_counts_of_many_classes_is_a_ranked_profile():
    import io

    from PIL import Image

    from vistrain.evaluation import plots

    k = 200
    classes = [f"species_{i:03d}" for i in range(k)]
    counts = {"train": {c: 5 + i % 30 for i, c in enumerate(classes)}, "valid": {c: 2 for c in classes}}
    w, h = Image.open(io.BytesIO(plots.class_counts(counts, classes))).size
    assert h < 600 and w < 1200  # one chart of ranked columns, not 0.35 inch of bars per class and split
    w, h = Image.open(io.BytesIO(plots.class_counts(counts, classes[:5]))).size
    assert h > 300  # few classes: labelled bars, one group per class


def test_many_classes_get_one_smaller_correct_example_each_unless_asked():
    from vistrain.evaluation.plots import MANY_CLASSES
    from vistrain.evaluation.report import SMALL_TILE, TILE, correct_examples

    assert correct_examples(MANY_CLASSES, None) == (2, TILE)
    assert correct_examples(MANY_CLASSES + 1, None) == (1, SMALL_TILE)  # 150 classes: 13.8 MB of tiles before
    assert correct_examples(150, 3) == (3, SMALL_TILE) and correct_examples(5, 0) == (0, TILE)


def test_charts_of_class_names_the_font_lacks_raise_no_warnings():
    import warnings

    import numpy as np

    from vistrain.evaluation import plots

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        png = plots.confusion(np.array([[3, 1], [0, 4]]), ["日本", "café"])  # no CJK font on these machines
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [w for w in caught if "missing from font" in str(w.message)]


def test_report_stops_at_a_scored_image_that_breaks_after_the_scan(run_copy, mislabelled, monkeypatch):
    """As ``evaluate``: the scan read every image of the folder, so one that fails when predicted
    changed meanwhile; left out silently, the report would be of other images than those scanned."""
    from vistrain.evaluation.predictor import Predictor
    from vistrain.evaluation.report import write_report

    broken = mislabelled / "squares" / "odd_circle.png"
    predict = Predictor.outputs_from_paths

    def after_the_scan(self, paths, *args, **kwargs):
        broken.write_bytes(b"not an image any more")
        return predict(self, paths, *args, **kwargs)

    monkeypatch.setattr(Predictor, "outputs_from_paths", after_the_scan)
    with pytest.raises(ValueError, match=re.escape(str(broken)) + ".*changed since it was scanned"):
        write_report(run_copy, mislabelled, cache_dir=False)
    assert not (run_copy / "report.html").exists()


def test_report_on_validation_leaves_out_a_file_it_cannot_read(run_copy, tmp_path):
    """Nothing scans split.csv's files before they are predicted: one that cannot be read is left out
    and listed, as a missing one is (and as the scan does with a folder's), and the rest reported on."""
    from vistrain.evaluation.report import write_report

    with (run_copy / "split.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    valid = [r for r in rows if r["split"] == "valid"]
    valid[0]["path"] = str(broken)
    with (run_copy / "split.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    _, a = write_report(run_copy)
    assert [s["path"] for s in a.skipped] == [str(broken)] and len(a.paths) == len(valid) - 1
    assert str(broken) in (run_copy / "report.html").read_text()


def test_report_on_validation_finds_relative_paths_under_the_training_folder(run_copy, tmp_path, monkeypatch):
    """split.csv paths relative to the training folder (older runs wrote them so) are looked for
    there, as export and evaluate do, not under whatever directory the report is run from."""
    from vistrain.evaluation.report import write_report

    root = json.loads((run_copy / "config.json").read_text())["training"]["data"]["root"]
    with (run_copy / "split.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["path"] = str(Path(r["path"]).relative_to(root))
    with (run_copy / "split.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    monkeypatch.chdir(tmp_path)
    _, a = write_report(run_copy)
    assert a.skipped == [] and len(a.paths) == sum(r["split"] == "valid" for r in rows)

"""The export's model card (README.md) states the run's own figures, and its predict_onnx.py runs the
model without vistrain, giving vistrain's answers from vistrain's input, bit for bit."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vistrain.data.images import load_rgb
from vistrain.data.transforms import Preprocessing, normalize_array, to_model_pixels
from vistrain.export.card import CARD_FILE, MARKER, SCRIPT_FILE, _code, write_card
from vistrain.export.standalone import load, pixels
from vistrain.runtime import OnnxPredictor
from vistrain.runtime.bundle import read_export

# Runs the folder's script as a user would, with vistrain impossible to import.
_NO_VISTRAIN = ("import runpy, sys; sys.modules['vistrain'] = None; sys.argv = sys.argv[1:]; "
                "runpy.run_path(sys.argv[0], run_name='__main__')")


def _run_script(folder: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _NO_VISTRAIN, str(folder / SCRIPT_FILE), *args],
                          check=False, capture_output=True, text=True, timeout=120)


def _pct(x: float) -> str:
    return f"{x:.1%}"


def test_card_states_the_runs_figures(exported_run, trained_run):
    run, _ = trained_run
    text = (exported_run / CARD_FILE).read_text()
    metrics = json.loads((run / "metrics.json").read_text())
    info = json.loads((exported_run / "export.json").read_text())
    valid = metrics["valid"]
    assert text.startswith(MARKER)
    assert f"# {run.name}: an image classifier for {len(info['classes'])} classes" in text
    lo, hi = valid["accuracy_ci"]
    assert f"| validation, {valid['n']} | **{_pct(valid['accuracy'])}** | {_pct(lo)} – {_pct(hi)} |" in text
    assert "There was no test split" in text  # this run has none: the card says where an unbiased figure comes from
    for name, pc in valid["per_class"].items():
        assert f"| `{name}` | {_pct(pc['precision'])} | {_pct(pc['recall'])} | {pc['f1']:.2f} | {pc['support']} |" in text
    for variant, m in info["models"].items():
        assert f"| `{m['file']}` ({variant}" in text and f"| {_pct(m['valid_accuracy'])} |" in text
    agreement = info["models"]["int8"]["calibration_agreement"]
    assert (f"On the {agreement['images']} training photos it was calibrated on, int8 gives PyTorch's answer for "
            f"{agreement['same_answer']} ({_pct(agreement['same_answer'] / agreement['images'])})") in text
    check = info["models"]["int8"]["training_photos_check"]
    assert f"It is right on {check['int8_right']} of them, PyTorch on {check['pytorch_right']}." in text
    assert f"below {_pct(info['unsure_threshold'])}" in text
    assert f"{info['models']['int8']['familiar_threshold']:.3f} (int8)" in text  # the default file's own threshold
    # Every file is listed with its real digest, the script included.
    rows = dict(re.findall(r"\| `([^`]+)` \| [\d,]+ \| `([0-9a-f]{64})` \|", text))
    assert {"model.onnx", "model.int8.onnx", "export.json", SCRIPT_FILE} <= set(rows)
    for name, digest in rows.items():
        assert hashlib.sha256((exported_run / name).read_bytes()).hexdigest() == digest, name


def test_accuracy_interval_reads_the_same_wherever_it_is_printed():
    """6 of 8 right: Wilson's upper bound is 0.928521, 92.9%. metrics.json kept it as 0.9285, which
    the train summary and the card printed as 92.8% (rounded twice) while `vistrain report` said 92.9%."""
    from vistrain.evaluation.intervals import wilson
    from vistrain.evaluation.metrics import classification_metrics
    from vistrain.evaluation.render import ci_text
    from vistrain.export.card import _interval

    lo, hi = wilson(6, 8)
    exact = f"{lo:.1%}", f"{hi:.1%}"
    assert exact[1] == "92.9%"
    m = classification_metrics(np.array([0] * 4 + [1] * 4), np.array([0, 0, 0, 1, 1, 1, 1, 0]), ["a", "b"])
    assert tuple(f"{v:.1%}" for v in json.loads(json.dumps(m))["accuracy_ci"]) == exact  # as metrics.json keeps it
    older = {**m, "accuracy_ci": [round(lo, 4), round(hi, 4)]}  # a metrics.json written before
    for metrics in (m, older):
        assert ci_text(metrics) == f"; 95% CI {exact[0]}–{exact[1]}"
        assert _interval(metrics) == f"{exact[0]} – {exact[1]}"
    assert ci_text({"accuracy": 0.75}) == "" and _interval({"accuracy": 0.75, "n": 8, "errors": 2}) == ""


@pytest.mark.parametrize("variant", ["int8", "fp32"])
def test_standalone_script_gives_vistrains_answers_without_vistrain(exported_run, trained_run, tmp_path, variant):
    _, data = trained_run
    photos = sorted(data.rglob("*.png"))[::4]
    rng = np.random.default_rng(0)  # nothing like the coloured shapes it learned: vistrain flags them
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(noise := tmp_path / "noise.png")
    Image.new("RGB", (64, 64), (255, 255, 255)).save(blank := tmp_path / "blank.png")
    photos += [noise, blank]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    done = _run_script(exported_run, *map(str, photos), str(broken), *(["--fp32"] if variant == "fp32" else []))
    assert done.returncode == 1, done.stderr  # one file failed
    lines = [line.split("\t") for line in done.stdout.strip().splitlines()]
    assert len(lines) == len(photos) + 1
    assert lines[-1][:2] == [str(broken), "error"]
    predictor = OnnxPredictor.from_folder(exported_run, variant)
    expected = predictor.predict_paths(photos)
    threshold = predictor.unsure_threshold
    assert [w.familiar for w in expected[-2:]] == [False, False] and any(w.familiar for w in expected)
    for fields, want in zip(lines, expected):
        probs = dict(f.split("=") for f in fields[4:])
        assert fields[0] == str(want.path)
        assert list(probs) == predictor.classes
        np.testing.assert_allclose([float(v) for v in probs.values()], want.probabilities, atol=6e-5)
        assert float(fields[3]) == pytest.approx(want.similarity, abs=6e-5)
        best = int(want.probabilities.argmax())
        unsure = threshold is not None and want.probabilities[best] < threshold
        answer = "unsure" if unsure else predictor.classes[best]
        # The threshold sits between validation photos' similarities, so even the photo nearest it
        # stays on its side whatever the summation order (it used to sit on one photo's own value).
        assert fields[1] == ("unfamiliar" if not want.familiar else answer)


def test_standalone_script_without_a_familiarity_file(exported_run, trained_run, tmp_path):
    folder = tmp_path / "export"
    shutil.copytree(exported_run, folder)
    (folder / "familiar.safetensors").unlink()  # exports of runs made before the check have none
    photo = min(trained_run[1].rglob("*.png"))
    done = _run_script(folder, str(photo))
    assert done.returncode == 0, done.stderr
    fields = done.stdout.strip().split("\t")
    assert fields[3] == "-" and fields[1] != "unfamiliar"


def test_standalone_script_reads_folders_as_vistrain_predict_does(exported_run, trained_run, tmp_path):
    from vistrain.data.layout import SORTED_MARKER
    from vistrain.prediction import collect_images

    photos = tmp_path / "photos"
    shutil.copytree(trained_run[1], photos)  # class folders: files one level down
    (photos / ".hidden.png").write_bytes((photos / "circles" / "circles_0.png").read_bytes())
    for junk in ("__MACOSX", ".thumbnails", "sorted/circles", "old-run"):
        (photos / junk).mkdir(parents=True)
        shutil.copy(photos / "circles" / "circles_0.png", photos / junk / "copy.png")
    (photos / "sorted" / SORTED_MARKER).write_text("{}")  # an earlier `predict --into photos/sorted`
    (photos / "old-run" / "model.safetensors").write_bytes(b"")
    (photos / "old-run" / "config.json").write_text("{}")
    done = _run_script(exported_run, str(photos), str(photos / "circles" / "circles_1.png"))
    assert done.returncode == 0, done.stderr
    read = [line.split("\t")[0] for line in done.stdout.strip().splitlines()]
    want = collect_images([photos, photos / "circles" / "circles_1.png"])
    # circles_1.png, named again after its folder, is answered once, as vistrain predict answers it.
    assert read == [str(p) for p in want] and len(want) == len(list(trained_run[1].rglob("*.png")))
    usage = _run_script(exported_run)
    assert usage.returncode == 2 and f"python {SCRIPT_FILE} photo.jpg" in usage.stderr
    helped = _run_script(exported_run, "--help")  # help, not a file named --help
    assert helped.returncode == 0 and "Classify photos with the model in this folder" in helped.stdout
    (alone := tmp_path / "alone").mkdir()  # the script mailed on its own: help still reads
    shutil.copy(exported_run / SCRIPT_FILE, alone / SCRIPT_FILE)
    assert _run_script(alone, "-h").stdout == helped.stdout
    odd = _run_script(exported_run, "--int8", str(photos))
    assert odd.returncode == 2 and "unknown option --int8" in odd.stderr and not odd.stdout


def _odd_images(folder: Path) -> list[Path]:
    """Every branch of the decoding: EXIF rotation, JPEG draft scale, alpha, palette transparency, 16-bit, grey."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (150, 260, 3), dtype=np.uint8)
    out = {}
    img = Image.fromarray(rgb)
    exif = img.getexif()
    exif[0x0112] = 6  # stored sideways: shown rotated
    img.save(out.setdefault("rotated.jpg", folder / "rotated.jpg"), exif=exif)
    Image.fromarray(rng.integers(0, 255, (1300, 900, 3), dtype=np.uint8)).save(out.setdefault("big.jpg", folder / "big.jpg"))
    alpha = rng.integers(0, 255, (150, 260, 1), dtype=np.uint8)
    Image.fromarray(np.dstack([rgb, alpha])).save(out.setdefault("alpha.png", folder / "alpha.png"))
    pal = Image.fromarray(rgb).convert("P")
    pal.save(out.setdefault("pal.png", folder / "pal.png"), transparency=3)
    Image.fromarray(rng.integers(0, 65535, (90, 70)).astype(np.uint16)).save(out.setdefault("deep.png", folder / "deep.png"))
    Image.fromarray(rgb[:, :, 0]).save(out.setdefault("grey.webp", folder / "grey.webp"))
    return list(out.values())


@pytest.mark.parametrize("resize", ["crop", "pad", "squish"])
def test_standalone_preprocessing_is_vistrains_bit_for_bit(tmp_path, resize):
    for size, interpolation in ((64, "bicubic"), (96, "bilinear")):
        prep = Preprocessing(size, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), interpolation, resize)
        as_json = json.loads(json.dumps(prep.to_dict()))  # what the script reads from export.json
        for path in _odd_images(tmp_path):
            want = normalize_array(to_model_pixels(load_rgb(path, min_side=size), prep), prep)
            got = pixels(load(path, size), as_json)
            assert got.dtype == np.float32 and np.array_equal(got, want), (path.name, resize, size)


def test_class_names_stay_whole_in_the_cards_tables():
    assert _code("a|b") == "`a\\|b`"  # a bare | would split the table's row
    assert _code("it`s") == "`` it`s ``"


def test_card_never_overwrites_a_users_readme(exported_run, trained_run, tmp_path):
    run, _ = trained_run
    out = shutil.copytree(exported_run, tmp_path / "export")
    _, info = read_export(out)
    (out / CARD_FILE).write_text("# my notes\n")
    card, script, notes = write_card(run, out, info)
    assert (out / CARD_FILE).read_text() == "# my notes\n"
    assert card == out / "README.vistrain.md" and card.read_text().startswith(MARKER)
    assert any("is not vistrain's" in n for n in notes)
    # vistrain's own card is simply rewritten.
    (out / CARD_FILE).write_text(MARKER + "\nstale\n")
    card, _, notes = write_card(run, out, info)
    assert card == out / CARD_FILE and "stale" not in card.read_text() and not notes
    assert script.read_text() == (Path(load.__code__.co_filename)).read_text()


@pytest.mark.parametrize("cal, said", [
    ({"temperature": 1.0, "fitted_temperature": 1.0, "n": 6}, "No temperature was fitted: every validation image"),
    ({"temperature": 1.0, "fitted_temperature": 0.62, "n": 8, "heldout_nll_raw": None},
     "(0.62) was set aside: with 8 validation images (fewer than 10) it could not be checked"),
    ({"temperature": 1.0, "fitted_temperature": 1.7, "n": 80, "heldout_nll_raw": 0.3, "heldout_nll_scaled": 0.31},
     "(1.7) was set aside: it did not lower the log-loss of held-out images"),
])
def test_card_says_why_the_raw_softmax_was_kept(cal, said):
    from vistrain.export.card import _raw_softmax_why

    assert said in _raw_softmax_why(cal)


def test_card_figures_read_right_at_their_edges(exported_run, trained_run):
    """A threshold of 0.999715 is not "below 100.0%"; classes that all scored the same have no
    weakest; duplicates come in groups; a resumed run's seconds are its last session's."""
    from dataclasses import replace

    from vistrain.export.card import _data, _limits, _made, _threshold_pct, card_text

    assert [_threshold_pct(x) for x in (0.999715, 0.6, 0.9996, 0.00004, 1.0)] == [
        "99.97%", "60.0%", "99.96%", "0.004%", "100.0%"]
    run, _ = trained_run
    _, info = read_export(exported_run)
    text = card_text(run, exported_run, replace(info, unsure_threshold=0.999715))
    assert 'or "unsure" when its top probability is below 99.97%.' in text
    assert '"unsure": the top probability is below 99.97%.' in text and "below 100.0%" not in text

    per_class = {c: {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 3} for c in info.classes}
    limits = "\n".join(_limits(info, {"valid": {"per_class": per_class}}, {}, {}))
    assert f"Every class scored F1 1.00 on validation ({3 * len(info.classes)} images)" in limits
    assert "weakest" not in limits
    per_class[info.classes[1]]["f1"] = 0.8
    limits = "\n".join(_limits(info, {"valid": {"per_class": per_class}}, {}, {}))
    assert f"Its weakest class on validation is `{info.classes[1]}` (F1 0.80, on 3 images)" in limits

    data = {"counts": {"train": {c: 5 for c in info.classes}}, "root": "photos", "layout": "class folders"}
    found = "\n".join(_data(data, {"summary": {"near_duplicate": 4, "exact_duplicate": 1, "outlier": 2}}, info.classes))
    assert "found: 4 groups of near duplicates, 1 group of exact copies, 2 outliers (" in found

    metrics = {"seconds": 13.2, "device": "cpu"}
    assert "- The run took 13 s on the CPU." in _made({"training": {"resume": False}}, metrics, run)
    assert "- The last session (a resumed run) took 13 s on the CPU." in _made({"training": {"resume": True}}, metrics, run)


def test_standalone_script_stops_quietly_when_its_reader_goes_away(exported_run, trained_run):
    """`python predict_onnx.py photos/ | head`: a closed stdout ends it without a traceback."""
    photos = trained_run[1]
    proc = subprocess.Popen([sys.executable, "-c", _NO_VISTRAIN, str(exported_run / SCRIPT_FILE), str(photos)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before its first line: every write it makes finds the pipe closed
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 141, err.decode()
    assert b"Traceback" not in err and b"BrokenPipe" not in err


def test_card_gives_a_resumed_runs_time_over_every_session(tmp_path):
    from vistrain.export.card import _made

    metrics = {"seconds": 13.2, "total_seconds": 52.3, "session_seconds": [30.0, 9.1, 13.2], "device": "cpu"}
    made = "\n".join(_made({"training": {"resume": True}}, metrics, tmp_path))
    assert ("- Training took 52 s in all, over 3 sessions (interrupted and resumed); the last session took 13 s on "
            "the CPU.") in made
    assert "The last session (a resumed run)" not in made
    # A run never resumed, and one resumed from a checkpoint that did not time its sessions: as before.
    assert "- The run took 9.5 s on cuda:0." in _made({"training": {"resume": False}}, {"seconds": 9.5, "device": "cuda:0"},
                                                     tmp_path)

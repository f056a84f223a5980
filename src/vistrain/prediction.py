"""What every predictor returns (PyTorch, ONNX Runtime, the server): torch-free, shared by all."""

from __future__ import annotations

import csv
import filecmp
import json
import os
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vistrain.data.images import ImageError
from vistrain.data.layout import SORTED_MARKER, DataError, label_as_name, tree_files


@dataclass
class Prediction:
    path: str
    probabilities: np.ndarray | None  # over the model's classes; None when the file failed
    error: str | None = None
    # Nearest-neighbour similarity to the training photos, and whether it passes the run's threshold
    # (vistrain.familiarity); None for runs without the check.
    similarity: float | None = None
    familiar: bool | None = None


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` (the run's stored temperature calibrates it)."""
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def decoded_batches(
    paths: list[str | Path],
    decode: Callable[[str], np.ndarray],
    batch_size: int,
    progress: Callable[[int], None] | None = None,
) -> Iterator[tuple[list[str], list[int], np.ndarray | None, list[str | None]]]:
    """Decode files in threads, a batch at a time, for every predictor.

    Yields ``(paths, good, pixels, errors)`` per batch: ``pixels`` stacks the files at positions
    ``good`` (None when none decoded); ``errors`` holds each file's reason, or None. A bad file
    costs only its own prediction.
    """

    def one(p: str):
        try:
            return decode(p), None
        except ImageError as exc:
            return None, exc.reason

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for start in range(0, len(paths), batch_size):
            chunk = [str(p) for p in paths[start : start + batch_size]]
            decoded = list(pool.map(one, chunk))
            good = [i for i, (px, _) in enumerate(decoded) if px is not None]
            pixels = np.stack([decoded[i][0] for i in good]) if good else None
            yield chunk, good, pixels, [err for _, err in decoded]
            if progress:
                progress(len(chunk))


def outputs_over_files(
    paths: list[str | Path],
    decode: Callable[[str], np.ndarray],
    batch_size: int,
    n_classes: int,
    run: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    similarity_of: Callable[[np.ndarray], np.ndarray] | None,
    progress: Callable[[int], None] | None = None,
    views: int = 1,
    on_batch: Callable | None = None,
) -> tuple[np.ndarray, np.ndarray | None, list[str | None]]:
    """Any predictor's pass over files: ``N x views x K`` logits (NaN where a file failed), each
    file's similarity to the training photos (NaN where it failed; None when ``similarity_of`` is
    None: no familiarity check) and each file's error or None.

    ``run(pixels)`` gives a batch's ``views`` logits and the features ``similarity_of`` reads;
    ``on_batch(paths, pixels, logits, features)`` sees each decoded batch (logits averaged over
    the views), for work on the same outputs without decoding or running the model again.
    """
    logits = np.full((len(paths), views, n_classes), np.nan, dtype=np.float32)
    similarity = None if similarity_of is None else np.full(len(paths), np.nan, dtype=np.float32)
    errors: list[str | None] = []
    start = 0
    for chunk, good, pixels, errs in decoded_batches(paths, decode, batch_size, progress):
        if good:
            at = [start + i for i in good]
            logits[at], features = run(pixels)
            if on_batch is not None:
                on_batch([chunk[i] for i in good], pixels, logits[at].mean(axis=1), features)
            if similarity is not None:
                similarity[at] = similarity_of(features)
        errors.extend(errs)
        start += len(chunk)
    return logits, similarity, errors


def predictions(paths: list[str | Path], logits: np.ndarray, similarity: np.ndarray | None,
                errors: list[str | None], temperature: float, familiarity) -> list[Prediction]:
    """One :class:`Prediction` per file from :func:`outputs_over_files`' arrays: the views' mean
    logits through the temperature, and the familiarity verdict where there is a similarity."""
    results = []
    for i, (p, z, err) in enumerate(zip(paths, logits, errors)):
        probs = None if err else softmax(z.mean(axis=0, keepdims=True), temperature)[0]
        sim = None if err or similarity is None else float(similarity[i])
        results.append(Prediction(str(p), probs, err, sim, None if sim is None else familiarity.verdict(sim)))
    return results


def collect_images(inputs: list[str | Path], skipped: list[tuple[Path, str]] | None = None) -> list[Path]:
    """Files given directly, plus every non-hidden file under the folders given (sorted, recursive).

    Read as training reads class folders (data.layout.tree_files): hidden folders and ``__MACOSX``
    are passed over, and so are vistrain's own outputs inside a folder given (a run's copies of
    misclassified images, an earlier ``predict --into``), each added to ``skipped`` with what it is:
    predicting ``photos/`` again after ``--into photos/sorted`` must not answer for the copies too.
    """
    skipped = [] if skipped is None else skipped
    files: list[Path] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            files.extend(tree_files(p, skipped, given=True))
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    # A folder and a file inside it (or one folder twice): one answer per photo, in first-seen order.
    unique, seen = [], set()
    for f in files:
        if f.resolve() not in seen:
            seen.add(f.resolve())
            unique.append(f)
    return unique


def check_answer_options(top_k: int, unsure: float | None, names: tuple[str, str] = ("top_k", "unsure")) -> None:
    """Refuse, by name, a ``top_k`` below 1 (no answer at all; a negative one would slice from the
    end) or an ``unsure`` outside [0, 1) (at 1 every answer would be unsure). ``names``: the
    caller's own words for them (the CLI's flags)."""
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise ValueError(f"{names[0]} {top_k!r} must be a whole number, at least 1")
    if unsure is not None and not 0 <= unsure < 1:
        raise ValueError(f"{names[1]} {unsure!r} must be a probability from 0 (never unsure) to below 1")


def classify_files(predict_paths: Callable, classes: list[str], inputs: list[str | Path], top_k: int,
                   threshold: float | None, ui) -> list[dict]:
    """Rows (:func:`prediction_row`) for the files and folders ``inputs``, read as
    :func:`collect_images` reads them; ``predict_paths(paths, advance)`` is any predictor's."""
    skipped: list[tuple[Path, str]] = []
    paths = collect_images(inputs, skipped)
    for folder, what in skipped:
        ui.log(f"{folder}/ ({what}) ignored")
    if not paths:
        raise DataError(f"{', '.join(str(i) for i in inputs)}: no files to classify (hidden files are passed over)")
    with ui.stage("predict", len(paths)) as advance:
        preds = predict_paths(paths, advance)
    return [prediction_row(p, classes, top_k, threshold) for p in preds]


def prediction_row(p: Prediction, classes: list[str], top_k: int, unsure: float | None) -> dict:
    if p.probabilities is None:
        return {"path": p.path, "label": None, "probability": None, "unsure": None, "familiar": None,
                "similarity": None, "top": [], "error": p.error}
    order = np.argsort(-p.probabilities)[:top_k]
    best = float(p.probabilities[order[0]])
    return {
        "path": p.path,
        "label": classes[order[0]],
        "probability": best,
        "unsure": bool(unsure is not None and best < unsure),
        "familiar": p.familiar,  # None: the run has no familiarity check
        "similarity": p.similarity,
        "top": [(classes[i], float(p.probabilities[i])) for i in order],
        "error": None,
    }


def write_predictions_csv(rows: list[dict], path: Path, top_k: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # A file name that is not UTF-8 (old zips) is written as its escapes, as the screen shows it.
    with path.open("w", newline="", encoding="utf-8", errors="backslashreplace") as f:
        w = csv.writer(f)
        header = ["path", "label", "probability", "unsure", "familiar", "similarity"]
        for i in range(1, top_k + 1):
            header += [f"top{i}", f"top{i}_probability"]
        w.writerow(header + ["error"])
        for r in rows:
            line = [r["path"], r["label"] or "", "" if r["probability"] is None else f"{r['probability']:.6f}",
                    "" if r["unsure"] is None else str(r["unsure"]).lower(),
                    "" if r.get("familiar") is None else str(r["familiar"]).lower(),
                    "" if r.get("similarity") is None else f"{r['similarity']:.4f}"]
            for i in range(top_k):
                line += [r["top"][i][0], f"{r['top'][i][1]:.6f}"] if i < len(r["top"]) else ["", ""]
            w.writerow(line + [r["error"] or ""])


def answer_kind(row: dict) -> str:
    """What an answer is, by the precedence ``--into`` sorts by: ``failed``, ``unfamiliar``,
    ``unsure`` or ``class`` (confident: its label)."""
    if row["label"] is None:
        return "failed"
    if row.get("familiar") is False:
        return "unfamiliar"
    return "unsure" if row["unsure"] else "class"


def flag_folder(name: str, classes: list[str]) -> str:
    """``unsure`` or ``unfamiliar``, unless a class has that name: then the flag's folder must differ."""
    return f"{name} (vistrain)" if name in classes else name


def sort_into(rows: list[dict], folder: Path, classes: list[str] = ()) -> list[Path]:
    """Copy (never move) each image into ``folder/<label>/``, or ``unfamiliar/`` when it is unlike the
    training photos, or ``unsure/`` when the model is not confident (``unsure (vistrain)/`` and so on
    when a class has that name); names never collide, and a photo already there from an earlier run
    (the same bytes) is not copied again.

    ``folder`` gets a hidden marker (data.layout.SORTED_MARKER): if it lies inside a training folder,
    its copies, sorted by prediction, are not read as photos labelled by hand.
    """
    for r in rows:  # all refused before any copy is made, not halfway through
        if answer_kind(r) == "class":
            label_as_name(r["label"])
    written = []
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SORTED_MARKER).write_text(json.dumps({
        "written_by": "vistrain predict --into",
        "note": "copies sorted by a model's predictions; vistrain does not train on them when this folder "
                "lies inside a training folder (train on this folder itself to use them)"}, indent=2) + "\n")
    for r in rows:
        kind = answer_kind(r)
        if kind == "failed":
            continue
        dest_dir = folder / (r["label"] if kind == "class" else flag_folder(kind, classes))
        dest_dir.mkdir(parents=True, exist_ok=True)
        src = Path(r["path"])
        dest = dest_dir / src.name
        n = 1
        while dest.exists():
            if filecmp.cmp(src, dest, shallow=False):
                break  # sorted there by an earlier run: one copy of a photo is enough
            dest = dest_dir / f"{src.stem}_{n}{src.suffix}"
            n += 1
        else:
            shutil.copy2(src, dest)
        written.append(dest)
    return written

"""``RUN/report.html``: one self-contained page (images embedded) explaining what a model gets
wrong and why, and how far its probabilities can be trusted."""

from __future__ import annotations

import csv
import json
import shutil
from html import escape
from pathlib import Path

import numpy as np
from PIL import Image

from vistrain.data.images import ImageError, load_rgb
from vistrain.data.layout import label_as_name
from vistrain.data.transforms import to_model_pixels
from vistrain.evaluation import plots
from vistrain.evaluation.analysis import Analysis, reliability_pair
from vistrain.evaluation.calibration import set_aside
from vistrain.evaluation.gradcam import grad_cam
from vistrain.evaluation.labelled import describe_unknown
from vistrain.evaluation.metrics import most_confused
from vistrain.evaluation.predictor import Predictor
from vistrain.evaluation.report_audit import audit_section, data_section
from vistrain.evaluation.seen import describe_overlap
from vistrain.familiarity import describe_unfamiliar
from vistrain.heatmap import jpeg_data_url, overlay
from vistrain.progress import Reporter, SilentReporter

MATRIX_CLASSES = 30  # classes drawn in the confusion matrix; more: the part of it around the errors

CSS = """
body{font:15px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
header{background:#1d2330;color:#fff;padding:18px 32px}header h1{margin:0 0 4px;font-size:22px}
header p{margin:0;color:#c9cfdb}nav{margin-top:10px}nav a{color:#9ecbff;margin-right:14px;font-size:13px}
main{max-width:1100px;margin:0 auto;padding:8px 24px 48px}
section{background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.08);padding:8px 22px 18px;margin:18px 0}
h2{font-size:18px;border-bottom:1px solid #e3e6eb;padding-bottom:6px}
img.plot{max-width:100%;height:auto;display:block;margin:8px 0}
table{border-collapse:collapse;font-size:13px;margin:8px 0}th,td{padding:4px 10px;border-bottom:1px solid #eceef2;text-align:right}
th:first-child,td:first-child{text-align:left}thead th{background:#f0f2f5}
.ci{color:#6b7280;font-size:11px}.warn{background:#fff4e5;border-left:4px solid #f59e0b;padding:8px 12px;margin:8px 0}
.note{color:#4b5563;font-size:13px}.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(250px,1fr));gap:12px}
figure{margin:0;background:#fafbfc;border:1px solid #e5e7eb;border-radius:6px;padding:6px}
figure img{width:100%;height:auto;display:block;border-radius:4px}
figcaption{font-size:12px;margin-top:4px;overflow-wrap:anywhere}figcaption b.bad{color:#b91c1c}figcaption b.good{color:#15803d}
.kpi{display:flex;gap:14px;flex-wrap:wrap}.kpi div{background:#f0f4fa;border-radius:6px;padding:8px 14px}
.kpi b{display:block;font-size:20px}
"""


def _img(png: bytes, alt: str) -> str:
    return f'<img class="plot" alt="{escape(alt)}" src="{plots.data_uri(png)}">'


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.1%}"


def _ci(lo_hi) -> str:
    return "" if lo_hi is None else f' <span class="ci">[{lo_hi[0]:.0%}–{lo_hi[1]:.0%}]</span>'


def _score(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{escape(title)}</h2>{body}</section>'


TILE, SMALL_TILE = 240, 160  # heat-map tile heights; SMALL_TILE above plots.MANY_CLASSES classes


def heat_tiles(predictor: Predictor, paths: list[str], targets: np.ndarray, size: int = TILE) -> list[str | None]:
    """Side-by-side (photo | Grad-CAM overlay for the target class) as JPEG data URIs; None when unreadable."""
    prep = predictor.config.preprocessing
    pixels, good = [], []
    for i, p in enumerate(paths):
        try:
            pixels.append(to_model_pixels(load_rgb(p, min_side=prep.size), prep))
            good.append(i)
        except ImageError:
            continue
    out: list[str | None] = [None] * len(paths)
    if not good:
        return out
    px = np.stack(pixels)
    cams = grad_cam(predictor.model, predictor.config.backbone, px, prep, np.asarray(targets)[good])
    for i, rgb, cam in zip(good, px, cams):
        pair = np.concatenate([rgb, overlay(rgb, cam)], axis=1)
        small = Image.fromarray(pair).resize((2 * size, size), Image.Resampling.BILINEAR)
        out[i] = jpeg_data_url(np.asarray(small), quality=82)
    return out


COPIES_FILE = ".vistrain-copies.json"


def copy_errors(a: Analysis, folder: Path) -> int:
    """Copy (never move) each misclassified image into ``folder/<actual>/<predicted>/``.

    The copies of the previous report, listed in ``folder/.vistrain-copies.json``, go first, so the
    folder holds this report's errors only (a report on test after one on validation would
    otherwise mix both, and a retrained model's old errors would stay). Only files still exactly as
    copied are removed (same size and modification time): anything else found there is kept, and a
    new copy of the same name gets a numbered suffix.
    """
    for label in a.classes:  # before anything is removed or copied
        label_as_name(label)
    _remove_earlier_copies(folder)
    written: dict[str, list[int]] = {}
    for i in np.flatnonzero(a.y_pred != a.y_true):
        src = Path(a.paths[i])
        dest_dir = folder / a.classes[a.y_true[i]] / a.classes[a.y_pred[i]]
        dest_dir.mkdir(parents=True, exist_ok=True)
        dest, k = dest_dir / src.name, 1
        while dest.exists():
            dest, k = dest_dir / f"{src.stem}_{k}{src.suffix}", k + 1
        shutil.copy2(src, dest)
        st = dest.stat()
        written[dest.relative_to(folder).as_posix()] = [st.st_size, st.st_mtime_ns]
    if folder.is_dir():  # made by the copies above, or left by an earlier report
        (folder / COPIES_FILE).write_text(json.dumps({"written_by": "vistrain report", "files": written}, indent=1))
    return len(written)


def _remove_earlier_copies(folder: Path) -> None:
    try:
        listed = json.loads((folder / COPIES_FILE).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # no list (or an unreadable one): nothing is known to be ours, so nothing goes
    for rel, (size, mtime_ns) in listed.items():
        parts = Path(rel).parts
        if len(parts) != 3 or any(p in ("..", "") or p.startswith("/") for p in parts):
            continue  # only <actual>/<predicted>/<name>, never a path that leads elsewhere
        path = folder / rel
        try:
            st = path.lstat()
        except OSError:
            continue
        if path.is_file() and not path.is_symlink() and (st.st_size, st.st_mtime_ns) == (size, mtime_ns):
            path.unlink()
            for parent in (path.parent, path.parent.parent):  # <actual>/<predicted>/, emptied
                if parent != folder and parent.is_dir() and not any(parent.iterdir()):
                    parent.rmdir()


def _training_section(run_dir: Path) -> str:
    m = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").exists() else {}
    hist_file = run_dir / "history.csv"
    history = list(csv.DictReader(hist_file.read_text().splitlines())) if hist_file.exists() else []
    stage = m.get("stage")
    parts = []
    if stage:
        kept = "the fine-tuned network" if stage == "finetune" else "the linear probe on frozen features"
        probe, ft = m.get("probe_valid_accuracy"), m.get("finetune_best_valid_accuracy")
        why = (f"validation accuracy: linear probe {_pct(probe)}, best fine-tuning epoch {_pct(ft)}"
               if ft is not None else f"validation accuracy of the probe {_pct(probe)}; no fine-tuning epoch ran")
        parts.append(f"<p>Kept <b>{kept}</b>: {why}. The better one on validation wins (accuracy, then loss).</p>")
    parts += [f'<p class="note">{escape(n)}</p>' for n in m.get("notes", [])]
    if history:
        parts.append(_img(plots.training_curves(history), "loss and accuracy per epoch"))
    else:
        parts.append('<p class="note">No fine-tuning epochs: the linear probe is fitted in one go, so there are no curves.</p>')
    return "".join(parts)


def _metrics_section(a: Analysis) -> str:
    m = a.metrics
    said = describe_overlap(a.overlap, m["n"], "the run's split.csv") if a.overlap else ""
    unknown = describe_unknown(m)
    warning = "".join(f'<p class="warn">{escape(text)}</p>'
                      for text in (said, describe_unfamiliar(a.unfamiliar, m["n"]), unknown[:1].upper() + unknown[1:])
                      if text)
    rows = []
    for c in a.classes:
        r = m["per_class"][c]
        rows.append(f"<tr><td>{escape(c)}</td><td>{_pct(r['precision'])}{_ci(r['precision_ci'])}</td>"
                    f"<td>{_pct(r['recall'])}{_ci(r['recall_ci'])}</td><td>{_score(r['f1'])}{_ci(r['f1_ci'])}</td>"
                    f"<td>{r['support']}</td></tr>")
    for name, key in (("macro average", "macro_avg"), ("weighted average", "weighted_avg")):
        avg = m[key]
        rows.append(f"<tr><th>{name}</th><th>{_pct(avg['precision'])}</th><th>{_pct(avg['recall'])}</th>"
                    f"<th>{_score(avg['f1'])}</th><th>{m['n']}</th></tr>")
    # The smallest class with images: one with none here has no interval to be wide.
    small = min((r["support"] for r in m["per_class"].values() if r["support"]), default=0)
    absent = [c for c in a.classes if m["per_class"][c]["support"] == 0]
    undefined = (f'<p class="note">–: undefined (0/0). {_absent_said(absent)}A class never predicted has no '
                 "precision. The averages leave undefined values out.</p>"
                 if any(m["per_class"][c][k] is None for c in a.classes for k in ("precision", "recall", "f1")) else "")
    return (f'<div class="kpi"><div>accuracy<b>{_pct(m["accuracy"])}</b>{_ci(m["accuracy_ci"])}</div>'
            f'<div>errors<b>{m["errors"]} of {m["n"]}</b></div></div>{warning}'
            f'<p class="note">Brackets: 95% confidence intervals (Wilson for precision and recall, bootstrap for F1). '
            f'With {m["n"]} images ({small} in the smallest class) they are wide: differences inside them may be luck.</p>'
            "<table><thead><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>{undefined}"
            + _confusion_plot(np.array(m["confusion_matrix"]), a.classes))


def _absent_said(absent: list[str]) -> str:
    if not absent:
        return ""
    names = ", ".join(escape(c) for c in absent[:10]) + (f" and {len(absent) - 10} more" if len(absent) > 10 else "")
    return f"No images here of {names}: no recall or F1 for {'it' if len(absent) == 1 else 'them'}. "


def _confusion_plot(cm: np.ndarray, classes: list[str]) -> str:
    """The whole matrix, or for many classes the part of it around the errors: 150 classes drawn
    whole made a 14000 x 7000 pixel image, unreadable and past Pillow's decompression-bomb limit."""
    if len(classes) <= MATRIX_CLASSES:
        return _img(plots.confusion(cm, classes), "confusion matrix")
    idx = most_confused(cm, MATRIX_CLASSES)
    part = cm[np.ix_(idx, idx)]
    return (f'<p class="note">The confusion matrix of the {MATRIX_CLASSES} classes most involved in errors, of '
            f"{len(classes)} (<code>vistrain evaluate --json</code> gives the whole matrix); shares are of each actual class's "
            f"images, {int(cm[idx].sum() - part.sum())} of which were predicted as a class not shown.</p>"
            + _img(plots.confusion(part, [classes[i] for i in idx], cm[idx].sum(axis=1)), "confusion matrix"))


def _errors_section(a: Analysis, predictor: Predictor, top_n: int, errors_dir: Path, copied: int) -> str:
    losses, probs = a.losses, a.probabilities
    wrong = np.flatnonzero(a.y_pred != a.y_true)
    worst = wrong[np.argsort(-losses[wrong], kind="stable")][:top_n]
    body = [f"<p>The {len(worst)} largest losses among {len(wrong)} error(s), as <i>predicted / actual / loss / "
            "probability of actual</i>. Left: what the model saw; right: Grad-CAM for the predicted class "
            "(red: the regions that pushed it to that answer).</p>" if len(wrong) else
            "<p>No errors on these images.</p>"]
    if len(worst):
        tiles = heat_tiles(predictor, [a.paths[i] for i in worst], a.y_pred[worst])
        figs = []
        for i, uri in zip(worst, tiles):
            cap = (f"<b class=bad>{escape(a.classes[a.y_pred[i]])}</b> / {escape(a.classes[a.y_true[i]])} / "
                   f"{losses[i]:.2f} / {probs[i, a.y_true[i]]:.2f}<br>{escape(Path(a.paths[i]).name)}")
            img = f'<img alt="{escape(a.paths[i])}" src="{uri}">' if uri else "<p>(unreadable now)</p>"
            figs.append(f"<figure>{img}<figcaption>{cap}</figcaption></figure>")
        body.append(f'<div class="grid">{"".join(figs)}</div>')
    cm = np.array(a.metrics["confusion_matrix"])
    pairs = sorted(((cm[i, j], i, j) for i in range(len(cm)) for j in range(len(cm)) if i != j and cm[i, j]), reverse=True)
    if pairs:
        body.append("<h3>Most confused pairs</h3><table><thead><tr><th>actual</th><th>predicted as</th><th>images</th>"
                    "<th>share of actual</th></tr></thead><tbody>" + "".join(
                        f"<tr><td>{escape(a.classes[i])}</td><td>{escape(a.classes[j])}</td><td>{n}</td>"
                        f"<td>{n / cm[i].sum():.0%}</td></tr>" for n, i, j in pairs[:10]) + "</tbody></table>")
    body.append(f'<p class="note">{copied} misclassified image(s) copied (originals untouched) into '
                f'<code>{escape(str(errors_dir))}/&lt;actual&gt;/&lt;predicted&gt;/</code>.</p>')
    return "".join(body)


def correct_examples(n_classes: int, per_class: int | None) -> tuple[int, int]:
    """(examples per class, tile height in pixels) for the correct-predictions section.

    Every class keeps an example: a class that learned the background can score well, so no ranking
    picks the classes worth checking. With many classes, fewer and smaller tiles keep the page
    openable (150 classes: 13.8 MB at 2 per class and 240 px)."""
    many = n_classes > plots.MANY_CLASSES
    return (per_class if per_class is not None else 1 if many else 2), (SMALL_TILE if many else TILE)


def _correct_section(a: Analysis, predictor: Predictor, per_class: int | None) -> str:
    probs = a.probabilities
    right = a.y_pred == a.y_true
    per_class, size = correct_examples(len(a.classes), per_class)
    chosen = []
    for c in range(len(a.classes)):
        idx = np.flatnonzero(right & (a.y_true == c))
        chosen += list(idx[np.argsort(-probs[idx, c], kind="stable")][:per_class])
    if not chosen:
        return "<p>No correct predictions to show.</p>"
    tiles = heat_tiles(predictor, [a.paths[i] for i in chosen], a.y_true[chosen], size)
    figs = [f'<figure><img alt="{escape(a.paths[i])}" src="{uri}"><figcaption><b class=good>{escape(a.classes[a.y_true[i]])}</b>'
            f" {probs[i, a.y_true[i]]:.2f}<br>{escape(Path(a.paths[i]).name)}</figcaption></figure>"
            for i, uri in zip(chosen, tiles) if uri]
    smaller = (f" With {len(a.classes)} classes the tiles are smaller (<code>--per-class N</code> shows more)."
               if size == SMALL_TILE else "")
    return (f"<p>The {'most confident correct prediction' if per_class == 1 else 'most confident correct predictions'}"
            " of each class, with Grad-CAM for that class: check that the model looks at the subject, not at the "
            f'background.{smaller}</p><div class="grid">{"".join(figs)}</div>')


def _calibration_section(a: Analysis) -> str:
    c = a.calibration
    before, after = reliability_pair(a)
    where = ("fitted on these validation images (in-sample: expect it a little better than on new photos)"
             if a.fitted_here else "fitted on the run's validation images and judged here on images it never saw"
             if not a.overlap else f"fitted on the run's validation images and judged here on these images, "
             f"{a.overlap['train'] + a.overlap['valid']} of which the run has seen")
    return (f'<div class="kpi"><div>ECE before<b>{_pct(c["ece_before"])}</b></div><div>ECE after<b>{_pct(c["ece_after"])}</b></div>'
            f'<div>temperature<b>{a.temperature:.2f}</b></div><div>NLL<b>{c["nll_before"]:.3f} → {c["nll_after"]:.3f}</b></div></div>'
            f"<p>Expected calibration error: the gap between confidence and accuracy, averaged over 10 confidence bins. "
            f"Temperature scaling divides the logits by one number, {where}; it changes no prediction. "
            f"<code>predict</code> uses the stored temperature.{_rejected_note(c)}</p>"
            + _img(plots.reliability(before, after, c["ece_before"], c["ece_after"], a.temperature), "reliability diagram"))


def _rejected_note(c: dict) -> str:
    if not set_aside(c):
        return ""
    fitted, raw, scaled = c["fitted_temperature"], c.get("heldout_nll_raw"), c.get("heldout_nll_scaled")
    if raw is None:
        return (f" A temperature of {fitted:.2f} was fitted but not applied: fewer than 10 validation images "
                f"are too few to check it on images it was not fitted on.")
    return (f" A temperature of {fitted:.2f} was fitted but not applied: fitted on four fifths of the images, it raised "
            f"the log-loss of the fifth left out ({raw:.3f} → {scaled:.3f}, over five folds).")


def _abstention_section(a: Analysis) -> str:
    s = a.abstention
    t = s["target_precision"]
    if s["threshold"] is None:
        text = f"<p>No threshold reaches {t:.0%} precision on these images: even the most confident answers are wrong too often.</p>"
        chosen = None
    else:
        text = (f"<p>Answering only when the top probability is at least <b>{s['threshold']:.3f}</b> gives "
                f"<b>{_pct(s['precision'])}</b> precision on <b>{_pct(s['coverage'])}</b> of the images "
                f"(target {t:.0%}); the rest are 'unsure'. This threshold is the run's default for "
                "<code>predict --unsure</code> (an explicit value wins).</p>")
        chosen = (s["coverage"], s["precision"])
        if "threshold_here" in s and s["threshold_here"] is not None:
            text += (f'<p class="note">On these images alone, {s["threshold_here"]:.3f} would reach the target '
                     f'with {_pct(s["coverage_here"])} coverage.</p>')
    return text + _img(plots.coverage(a.curve.coverage, a.curve.accuracy, t, chosen), "accuracy versus coverage")


def render_report(run_dir: Path, a: Analysis, predictor: Predictor, top_n: int = 16, per_class: int | None = None,
                  reporter: Reporter | None = None) -> str:
    ui = reporter or SilentReporter()
    errors_dir = run_dir / "errors"
    copied = copy_errors(a, errors_dir)
    sections = [("data", "Data", data_section(run_dir, ui))]
    audit = audit_section(run_dir)
    if audit:
        sections.append(("audit", "Data audit findings", audit))
    with ui.stage("heat maps", 2, unit="step") as advance:
        errors_html = _errors_section(a, predictor, top_n, errors_dir, copied)
        advance(1)
        correct_html = _correct_section(a, predictor, per_class)
        advance(1)
    sections += [
        ("training", "Training", _training_section(run_dir)),
        ("metrics", "Per-class results", _metrics_section(a)),
        ("errors", "Worst errors", errors_html),
        ("heatmaps", "Where the model looks (correct predictions)", correct_html),
        ("calibration", "Calibration", _calibration_section(a)),
        ("abstention", "Abstention", _abstention_section(a)),
    ]
    if a.tta:
        t = a.tta
        sections.append(("tta", "Test-time augmentation",
                         (f"<p>Averaging each image with its mirror image: accuracy {_pct(t['accuracy_plain'])} → "
                         f"{_pct(t['accuracy_tta'])} ({t['gain'] * 100:+.1f} points) on {t['n']} images; the rest of this "
                         "report uses the averaged predictions.</p>")))
    if a.skipped:
        items = "".join(f"<li>{escape(s['path'])}: {escape(str(s['reason']))}</li>" for s in a.skipped[:50])
        sections.append(("skipped", "Images left out of this report", f"<ul>{items}</ul>"))
    nav = "".join(f'<a href="#{sid}">{escape(title)}</a>' for sid, title, _ in sections)
    body = "".join(_section(sid, title, html) for sid, title, html in sections)
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>vistrain report: {escape(run_dir.name)}'
            f'</title><meta name="viewport" content="width=device-width,initial-scale=1"><style>{CSS}</style></head>'
            f"<body><header><h1>Model report: {escape(str(run_dir))}</h1><p>{escape(predictor.config.backbone)}, "
            f"{len(a.classes)} classes; evaluated on {escape(a.source)}</p><nav>{nav}</nav></header>"
            f"<main>{body}</main></body></html>\n")


def write_report(run_dir: Path | str, data: Path | str | None = None, label_from_name: str | None = None,
                 target_precision: float | None = None, tta: bool = False, top_n: int = 16, per_class: int | None = None,
                 reporter: Reporter | None = None, cache_dir: Path | bool | None = None,
                 device: str = "auto") -> tuple[Path, Analysis]:
    """Analyse the run on ``data`` (default: its validation split) and write ``RUN/report.html``.

    ``per_class``: correct predictions shown per class (None: 2, or 1 above ``plots.MANY_CLASSES`` classes).

    ``cache_dir``: where the scan of ``data`` is cached, as ``evaluate``'s (False: nowhere; None: the default).

    ``device``: where the model runs (auto|cpu|cuda, see :mod:`vistrain.training.device`)."""
    from vistrain.evaluation.analysis import analyse

    run_dir = Path(run_dir)
    if target_precision is not None and not 0 < target_precision < 1:
        raise ValueError(f"target precision {target_precision} must be between 0 and 1 (e.g. 0.95)")
    if top_n < 1:
        raise ValueError(f"top losses {top_n} must be at least 1")
    if per_class is not None and per_class < 0:
        raise ValueError(f"correct predictions per class {per_class} must be at least 0")
    predictor = Predictor.from_folder(run_dir, device=device)
    a = analyse(run_dir, predictor, data, label_from_name, target_precision, tta, reporter, cache_dir)
    out = run_dir / "report.html"
    out.write_text(render_report(run_dir, a, predictor, top_n, per_class, reporter), encoding="utf-8")
    return out, a

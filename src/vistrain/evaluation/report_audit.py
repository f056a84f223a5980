"""The report's data sections: what the run trained on (``data_report.json``, ``split.csv``) and,
when the audit has run, its findings (``audit.json``)."""

from __future__ import annotations

import csv
import json
from collections import Counter, defaultdict
from html import escape
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from vistrain.data.images import heif_support
from vistrain.evaluation import plots
from vistrain.progress import Reporter

IMBALANCE_WARNING = 3.0  # largest / smallest class in training; beyond this, say so
_ORIENTATION = 0x0112


def header_size(path: str) -> tuple[int, int] | None:
    """Width and height as displayed (EXIF rotation applied) from the file header; no decoding."""
    heif_support()
    try:
        with Image.open(path) as img:
            w, h = img.size
            if img.getexif().get(_ORIENTATION) in (5, 6, 7, 8):
                w, h = h, w
            return w, h
    except (OSError, UnidentifiedImageError, ValueError):
        return None


def data_section(run_dir: Path, ui: Reporter) -> str:
    report_file = run_dir / "data_report.json"
    if not report_file.exists():
        return f"<p>No <code>{escape(str(report_file))}</code>: nothing known about the training data.</p>"
    rep = json.loads(report_file.read_text())
    classes, counts = rep.get("classes", []), rep.get("counts", {})
    parts = [(f"<p>{escape(rep.get('layout_description', ''))}: <code>{escape(rep.get('root', ''))}</code>, "
             f"{rep.get('n_usable', 0)} usable image(s), {rep.get('n_skipped', 0)} skipped.</p>")]
    train = counts.get("train", {})
    if train:
        big, small = max(train, key=train.get), min(train, key=train.get)
        ratio = train[big] / max(train[small], 1)
        if ratio >= IMBALANCE_WARNING:
            parts.append(f'<p class="warn">Class imbalance: {escape(big)} has {train[big]} training images, '
                         f"{escape(small)} {train[small]} ({ratio:.1f}×). Expect lower recall on the small classes.</p>")
        else:
            parts.append(f'<p class="note">Largest / smallest training class: {ratio:.1f}× ({escape(big)} / {escape(small)}).</p>')
    if counts:
        parts.append(f'<img class="plot" alt="images per class and split" src="{plots.data_uri(plots.class_counts(counts, classes))}">')
    split = run_dir / "split.csv"
    if split.exists():
        with split.open(newline="") as f:
            paths = [r["path"] for r in csv.DictReader(f)]
        sizes = []
        with ui.stage("image sizes", len(paths), unit="file") as advance:
            for p in paths:
                s = header_size(p)
                if s:
                    sizes.append(s)
                advance(1)
        if sizes:
            w, h = np.array(sizes, dtype=float).T
            parts.append(f'<p class="note">Sizes as stored (before resizing): median {int(np.median(w))}×{int(np.median(h))} px, '
                         f"smallest side {int(min(w.min(), h.min()))} px.</p>")
            parts.append(f'<img class="plot" alt="image sizes and aspect ratios" src="{plots.data_uri(plots.image_sizes(w, h))}">')
    skipped = rep.get("skipped", [])
    if skipped:
        reasons = Counter(s["reason"] for s in skipped)
        items = "".join(f"<li>{escape(s['path'])}: {escape(s['reason'])}</li>" for s in skipped[:30])
        more = f"<li>… and {len(skipped) - 30} more</li>" if len(skipped) > 30 else ""
        parts.append("<h3>Skipped files</h3><p>" + ", ".join(f"{n} × {escape(r)}" for r, n in reasons.most_common())
                     + f"</p><ul>{items}{more}</ul>")
    for note in rep.get("notes", []):
        parts.append(f'<p class="note">{escape(note)}</p>')
    return "".join(parts)


def audit_section(run_dir: Path, top: int = 5) -> str | None:
    """Findings of ``vistrain audit`` by kind (counts and the top entries), or None without an audit."""
    path = run_dir / "audit.json"
    if not path.exists():
        return None
    try:
        audit = json.loads(path.read_text())
        findings = list(audit.get("findings", []))
    except (OSError, ValueError, AttributeError) as exc:
        return f'<p class="warn">{escape(str(path))} is unreadable ({escape(str(exc))}).</p>'
    if not findings:
        return "<p>The audit found nothing to report.</p>"
    by_kind: dict[str, list[dict]] = defaultdict(list)
    for f in findings:
        by_kind[str(f.get("kind", "other"))].append(f)
    order = {"error": 0, "warning": 1, "info": 2}
    parts = [f'<p class="note">From <code>{escape(str(path))}</code> ({escape(str(audit.get("data", "")))}).</p>',
             "<table><thead><tr><th>kind</th><th>severity</th><th>findings</th></tr></thead><tbody>"]
    kinds = sorted(by_kind, key=lambda k: (min(order.get(f.get("severity"), 3) for f in by_kind[k]), -len(by_kind[k])))
    for k in kinds:
        sev = sorted({str(f.get("severity", "")) for f in by_kind[k]}, key=lambda s: order.get(s, 3))
        parts.append(f"<tr><td>{escape(k)}</td><td>{escape(', '.join(sev))}</td><td>{len(by_kind[k])}</td></tr>")
    parts.append("</tbody></table>")
    for k in kinds:
        ranked = sorted(by_kind[k], key=lambda f: -float(f.get("score") or 0))
        items = "".join(f"<li>{escape(str(f.get('message', '')))}" + (
            f" <span class='ci'>{escape(', '.join(map(str, f.get('files', [])[:3])))}</span>" if f.get("files") else "")
            + "</li>" for f in ranked[:top])
        parts.append(f"<h3>{escape(k)}</h3><ul>{items}</ul>")
    return "".join(parts)

"""Human-readable tables of metrics and predictions (rich), shared by the CLI commands."""

from __future__ import annotations

import os

from rich.markup import escape
from rich.table import Table
from rich.text import Text

from vistrain.evaluation.intervals import accuracy_interval
from vistrain.evaluation.metrics import f1_order


def per_class_table(metrics: dict, title: str, limit: int | None = None, full_at: str = "metrics.json") -> Table:
    """One row per class; with more than ``limit`` classes, only the ``limit`` weakest (lowest F1
    first), so that a summary of 200 bird species shows what needs work, not a page of 100%s.
    An undefined value (None: a class with no images here, or never predicted) shows as "n/a"."""
    classes = metrics["classes"]
    shown = classes
    if limit is not None and len(classes) > limit:
        shown = f1_order(metrics["per_class"], classes)[:limit]
        title = f"{title}: the {limit} weakest of {len(classes)} classes (all of them: {full_at})"
    t = Table(title=escape(title), title_justify="left")
    t.add_column("class", overflow="fold")
    for col in ("precision", "recall", "F1", "support"):
        t.add_column(col, justify="right")
    for c in shown:
        m = metrics["per_class"][c]
        t.add_row(escape(c), pct(m["precision"]), pct(m["recall"]), score(m["f1"]), str(m["support"]))
    listed = set(shown)
    rest = [metrics["per_class"][c]["f1"] for c in classes if c not in listed]
    measured = [f for f in rest if f is not None]
    if rest:
        t.add_row(f"[dim]… {len(rest)} more", "", "", f"[dim]≥ {min(measured):.3f}" if measured else "", "",
                  end_section=True)
    avg = metrics["macro_avg"]
    t.add_row("[bold]macro average", pct(avg["precision"]), pct(avg["recall"]), score(avg["f1"]),
              str(metrics["n"]), end_section=True)
    if any(metrics["per_class"][c][k] is None for c in classes for k in ("precision", "recall", "f1")):
        absent = sum(metrics["per_class"][c]["support"] == 0 for c in classes)
        t.caption = (f"{UNDEFINED}: undefined (0/0): no recall or F1 for a class with no images here"
                     + (f" ({absent} of {len(classes)})" if absent else "")
                     + ", no precision for one never predicted; the averages leave them out")
        t.caption_justify = "left"
    return t


UNDEFINED = "n/a"  # a metric that is 0/0 (None): a class with no images here, or one never predicted


def pct(x: float | None) -> str:
    return UNDEFINED if x is None else f"{x:.1%}"


def score(x: float | None) -> str:
    return UNDEFINED if x is None else f"{x:.3f}"


MIN_ROW_LABEL = 12  # the narrowest the "actual" column may fold to in a numbered matrix


def confusion_table(metrics: dict, width: int | None = None, full_at: str = "metrics.json") -> Table:
    """Counts, actual classes down, predicted across; where the class names do not fit across
    ``width`` (the console's), the columns are numbered and each row names its number. Where even
    numbered columns do not fit (dozens of classes), the most frequent confusions instead."""
    classes, cm = metrics["classes"], metrics["confusion_matrix"]
    # Each column: its text, 2 of padding and 1 of border; plus the table's last border.
    digits = len(str(max((max(row) for row in cm), default=0)))
    full = sum(max(len(c), digits) + 3 for c in classes) + max(len("actual"), *map(len, classes)) + 3 + 1
    numbered = width is not None and full > width
    if numbered and sum(max(len(str(i + 1)), digits) + 3 for i in range(len(classes))) + MIN_ROW_LABEL + 4 > width:
        return confusions_table(metrics, title=f"Most frequent confusions ({len(classes)} classes are too many for a "
                                               f"matrix {width} characters wide; the whole matrix: {full_at})",
                                width=width)
    title = "Confusion matrix (rows: actual, columns: predicted)"
    # As wide as its title where the console allows, so the title does not wrap to a narrow table.
    t = Table(title=title, title_justify="left", min_width=min(len(title), width) if width else None)
    t.add_column("actual", overflow="fold")
    for i, c in enumerate(classes):
        t.add_column(str(i + 1) if numbered else escape(c), justify="right")
    for i, c in enumerate(classes):
        t.add_row(f"{i + 1} {escape(c)}" if numbered else escape(c),
                  *[f"[bold]{v}" if i == j else (f"[red]{v}" if v else "·") for j, v in enumerate(cm[i])])
    return t


def confusions_table(metrics: dict, title: str, n: int = 10, width: int | None = None) -> Table:
    """The ``n`` largest off-diagonal counts: actual, predicted as, images, share of the actual class."""
    t = Table(title=escape(title), title_justify="left", min_width=min(len(title), width) if width else None)
    for col, justify in (("actual", "left"), ("predicted as", "left"), ("images", "right"), ("share of actual", "right")):
        t.add_column(col, justify=justify, overflow="fold")
    support = {c: sum(row) for c, row in zip(metrics["classes"], metrics["confusion_matrix"])}
    pairs = top_confusions(metrics, n)
    for a, b, count in pairs:
        t.add_row(escape(a), escape(b), str(count), f"{count / support[a]:.0%}")
    if not pairs:
        t.add_row("[green]none: every image was classified as its own class", "", "", "")
    return t


def predictions_table(rows: list[dict], top_k: int, width: int | None = None) -> Table:
    """One row per file: its path below the folder the files share (named in the title, so long
    paths do not squeeze the answers), the prediction in full, then the runners-up: in a column of
    their own where ``width`` (the console's) has room for it, else under the answer."""
    folder = common_folder([r["path"] for r in rows])
    names = [os.path.relpath(r["path"], folder) if folder else r["path"] for r in rows]
    answers, rests = [], []
    for r in rows:
        if r["error"]:
            answers.append(f"[red]error: {escape(r['error'])}")
            rests.append("")
            continue
        answers.append(f"{escape(r['label'])} {r['probability']:.1%}" + (" [yellow](unsure)" if r["unsure"] else "")
                       + (" [magenta](unfamiliar)" if r.get("familiar") is False else ""))
        rests.append(", ".join(f"{escape(c)} {p:.1%}" for c, p in r["top"][1:top_k]))
    answer_w = max((len(Text.from_markup(a).plain) for a, r in zip(answers, rows) if not r["error"]), default=10)
    rest_w = max((len(Text.from_markup(x).plain) for x in rests), default=0)
    name_w = max(map(len, names), default=4)
    beside = top_k > 1 and (width is None or name_w + answer_w + rest_w + 10 <= width)
    title = f"in {escape(folder)}" if folder else None
    # Rows of several lines need rules between them to be read as rows. A title wraps to the
    # table's width: the table is made as wide as its title, up to the console's.
    t = Table(title=title, title_justify="left", show_lines=not beside and top_k > 1,
              min_width=min(len(title), width or len(title)) if title else None)
    t.add_column("file", overflow="fold")
    t.add_column("prediction" if beside or top_k == 1 else "prediction (then)", min_width=answer_w, overflow="fold")
    if beside:
        t.add_column("then", overflow="fold")
    for name, answer, rest in zip(names, answers, rests):
        if beside:
            t.add_row(escape(name), answer, rest)
        else:
            t.add_row(escape(name), answer + (f"\n[dim]{rest}" if rest else ""))
    return t


def common_folder(paths: list[str]) -> str | None:
    """The deepest folder holding all ``paths``, spelt as they are (relative stays relative), or
    None when they share none worth naming."""
    dirs = [os.path.dirname(p) for p in paths]
    try:
        folder = os.path.commonpath(dirs) if dirs else ""
    except ValueError:  # relative and absolute mixed, or different drives
        try:
            folder = os.path.commonpath([os.path.abspath(d) for d in dirs])
        except ValueError:
            return None
    if not folder or folder == os.path.dirname(folder):  # none, or the filesystem root: nothing saved
        return None
    return folder


def worst_classes(metrics: dict, n: int = 2) -> list[str]:
    ranked = f1_order(metrics["per_class"], metrics["classes"])
    return [c for c in ranked[:n] if (f := metrics["per_class"][c]["f1"]) is not None and f < 1.0]


def top_confusions(metrics: dict, n: int = 3) -> list[tuple[str, str, int]]:
    classes, cm = metrics["classes"], metrics["confusion_matrix"]
    pairs = [(classes[i], classes[j], cm[i][j]) for i in range(len(classes)) for j in range(len(classes)) if i != j and cm[i][j]]
    return sorted(pairs, key=lambda p: -p[2])[:n]


def ci_text(metrics: dict) -> str:
    """``; 95% CI 87.3-96.9%`` for a metrics dict that has ``accuracy_ci`` (older runs' do not)."""
    ci = accuracy_interval(metrics)
    return f"; 95% CI {ci[0]:.1%}–{ci[1]:.1%}" if ci else ""

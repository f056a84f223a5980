"""Human-readable tables of metrics and predictions (rich), shared by the CLI commands."""

from __future__ import annotations

from rich.table import Table


def per_class_table(metrics: dict, title: str) -> Table:
    t = Table(title=title, title_justify="left")
    t.add_column("class")
    for col in ("precision", "recall", "F1", "support"):
        t.add_column(col, justify="right")
    for c in metrics["classes"]:
        m = metrics["per_class"][c]
        t.add_row(c, f"{m['precision']:.1%}", f"{m['recall']:.1%}", f"{m['f1']:.3f}", str(m["support"]))
    avg = metrics["macro_avg"]
    t.add_row("[bold]macro average", f"{avg['precision']:.1%}", f"{avg['recall']:.1%}", f"{avg['f1']:.3f}",
              str(metrics["n"]), end_section=True)
    return t


def confusion_table(metrics: dict) -> Table:
    classes = metrics["classes"]
    short = [c if len(c) <= 12 else c[:11] + "…" for c in classes]
    t = Table(title="Confusion matrix (rows: actual, columns: predicted)", title_justify="left")
    t.add_column("actual")
    for s in short:
        t.add_column(s, justify="right")
    for i, c in enumerate(classes):
        row = metrics["confusion_matrix"][i]
        t.add_row(c, *[f"[bold]{v}" if i == j else (f"[red]{v}" if v else "·") for j, v in enumerate(row)])
    return t


def predictions_table(rows: list[dict], top_k: int) -> Table:
    t = Table(title_justify="left")
    t.add_column("file", overflow="fold")
    t.add_column("prediction")
    for i in range(1, top_k):
        t.add_column(f"#{i + 1}")
    for r in rows:
        if r["error"]:
            t.add_row(r["path"], f"[red]error: {r['error']}", *[""] * (top_k - 1))
            continue
        first = f"{r['label']} {r['probability']:.1%}" + (" [yellow](unsure)" if r["unsure"] else "")
        rest = [f"{c} {p:.1%}" for c, p in r["top"][1:]]
        t.add_row(r["path"], first, *(rest + [""] * (top_k - 1 - len(rest))))
    return t


def worst_classes(metrics: dict, n: int = 2) -> list[str]:
    ranked = sorted(metrics["classes"], key=lambda c: metrics["per_class"][c]["f1"])
    return [c for c in ranked[:n] if metrics["per_class"][c]["f1"] < 1.0]


def top_confusions(metrics: dict, n: int = 3) -> list[tuple[str, str, int]]:
    classes, cm = metrics["classes"], metrics["confusion_matrix"]
    pairs = [(classes[i], classes[j], cm[i][j]) for i in range(len(classes)) for j in range(len(classes)) if i != j and cm[i][j]]
    return sorted(pairs, key=lambda p: -p[2])[:n]

"""The audit on a terminal: one rich table, a few rows per kind, and a one-line summary."""

from __future__ import annotations

from vistrain.clean.audit import AuditResult

ORDER = ["conflict", "leak", "exact_duplicate", "near_duplicate", "unreadable", "shortcut", "label_error", "outlier"]
COLOURS = {"error": "red", "warning": "yellow", "info": "cyan"}


def audit_table(result: AuditResult, rows_per_kind: int = 8):
    from rich.table import Table
    from rich.text import Text

    # Paths and messages as Text: a file named "a[/]b.png" is not read as rich markup.
    table = Table(title=Text(f"Audit of {result.data}"), show_lines=False)
    for col in ("kind", "severity", "files", "finding"):
        table.add_column(col, overflow="fold")
    by_kind: dict[str, list] = {}
    for f in result.findings:
        by_kind.setdefault(f.kind, []).append(f)
    for kind in sorted(by_kind, key=lambda k: ORDER.index(k) if k in ORDER else len(ORDER)):
        items = by_kind[kind]
        for f in items[:rows_per_kind]:
            files = "\n".join(f.files[:3]) + (f"\n(+{len(f.files) - 3} more)" if len(f.files) > 3 else "")
            table.add_row(kind, f"[{COLOURS[f.severity]}]{f.severity}[/]", Text(files), Text(f.message))
        if len(items) > rows_per_kind:
            table.add_row(kind, "", f"... {len(items) - rows_per_kind} more", "see --json or --out")
    return table


# Each finding of these kinds is a group of files, not one file: "3 near duplicate" read as 3 files.
NAMES = {
    "conflict": ("conflict", "conflicts"),
    "leak": ("leak across splits", "leaks across splits"),
    "exact_duplicate": ("group of exact copies", "groups of exact copies"),
    "near_duplicate": ("group of near duplicates", "groups of near duplicates"),
    "unreadable": ("unreadable file", "unreadable files"),
    "shortcut": ("shortcut", "shortcuts"),
    "label_error": ("likely label error", "likely label errors"),
    "outlier": ("outlier", "outliers"),
}


def summary_line(result: AuditResult) -> str:
    s = result.summary()
    if not s:
        return "audit: nothing found"
    parts = []
    for k in ORDER + sorted(set(s) - set(ORDER)):
        if k in s:
            one, many = NAMES.get(k, (k.replace("_", " "),) * 2)
            parts.append(f"{s[k]} {one if s[k] == 1 else many}")
    return "audit: " + ", ".join(parts)

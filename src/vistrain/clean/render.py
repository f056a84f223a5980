"""The audit on a terminal: one rich table, a few rows per kind, and a one-line summary."""

from __future__ import annotations

from vistrain.clean.audit import NON_IMAGE, AuditResult

# Also still importable from here, for code written before NAMES moved to data.findings.
from vistrain.data.findings import NAMES

ORDER = ["conflict", "leak", "exact_duplicate", "near_duplicate", "unreadable", "shortcut", "label_error", "outlier"]
# The counts of a summary: the skipped files that are not images next to the unreadable ones.
COUNT_ORDER = ORDER[:5] + [NON_IMAGE] + ORDER[5:]
COUNT_NAMES = {**NAMES, NON_IMAGE: ("file that is not an image", "files that are not images")}
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


def summary_line(result: AuditResult) -> str:
    s = result.counts()
    if not s:
        return "audit: nothing found"
    return "audit: " + ", ".join(counts_in_words(s))


def counts_in_words(counts: dict[str, int]) -> list[str]:
    """``["1 conflict", "2 files that are not images"]``: :meth:`AuditResult.counts` in the audit's order."""
    parts = []
    for k in COUNT_ORDER + sorted(set(counts) - set(COUNT_ORDER)):
        if k in counts:
            one, many = COUNT_NAMES.get(k, (k.replace("_", " "),) * 2)
            parts.append(f"{counts[k]} {one if counts[k] == 1 else many}")
    return parts

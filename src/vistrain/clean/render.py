"""The audit on a terminal: one rich table, a few rows per kind, and a one-line summary."""

from __future__ import annotations

from vistrain.clean.audit import AuditResult

ORDER = ["conflict", "leak", "exact_duplicate", "near_duplicate", "unreadable", "shortcut", "label_error", "outlier"]
COLOURS = {"error": "red", "warning": "yellow", "info": "cyan"}


def audit_table(result: AuditResult, rows_per_kind: int = 8):
    from rich.table import Table

    table = Table(title=f"Audit of {result.data}", show_lines=False)
    for col in ("kind", "severity", "files", "finding"):
        table.add_column(col, overflow="fold")
    by_kind: dict[str, list] = {}
    for f in result.findings:
        by_kind.setdefault(f.kind, []).append(f)
    for kind in sorted(by_kind, key=lambda k: ORDER.index(k) if k in ORDER else len(ORDER)):
        items = by_kind[kind]
        for f in items[:rows_per_kind]:
            files = "\n".join(f.files[:3]) + (f"\n(+{len(f.files) - 3} more)" if len(f.files) > 3 else "")
            table.add_row(kind, f"[{COLOURS[f.severity]}]{f.severity}[/]", files, f.message)
        if len(items) > rows_per_kind:
            table.add_row(kind, "", f"... {len(items) - rows_per_kind} more", "see --json or --out")
    return table


def summary_line(result: AuditResult) -> str:
    s = result.summary()
    if not s:
        return "audit: nothing found"
    return "audit: " + ", ".join(f"{s[k]} {k.replace('_', ' ')}" for k in ORDER + sorted(set(s) - set(ORDER)) if k in s)

"""Data flows one way: each part of vistrain imports only the parts below it (read from the source,
function-level imports included), so a low layer never drags in, or breaks with, a higher one."""

from __future__ import annotations

import ast
from pathlib import Path

import vistrain

ROOT = Path(vistrain.__file__).parent
# Lowest first; a part may import only parts of a lower rank (and itself).
RANKS = [
    {"extras"},  # words only: how to install an optional extra
    {"progress", "thresholds", "memory", "cache", "tracking", "__init__"},
    {"data"},
    {"prediction", "heatmap", "familiarity"},  # torch-free, shared by every predictor
    {"models"},
    {"training"},
    {"evaluation"},
    {"runtime", "clean", "config_file"},
    {"export"},
    {"serve", "api"},
    {"sweep"},
    {"commands"},
    {"cli"},
    {"__main__"},
]
RANK = {part: i for i, parts in enumerate(RANKS) for part in parts}
# The package's own face: `vistrain.train` and friends load the API lazily, on first use.
ALLOWED = {("__init__", "api")}


def _part(path: Path) -> str:
    return path.relative_to(ROOT).parts[0].removesuffix(".py")


def _imported_parts(tree: ast.AST) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "vistrain":
                found.update(alias.name for alias in node.names)
            elif node.module.startswith("vistrain."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("vistrain."))
    return found


def test_every_part_has_a_rank():
    parts = {_part(p) for p in ROOT.rglob("*.py")}
    assert parts - set(RANK) == set(), "a new part of vistrain: give it a place in RANKS"


def test_no_part_imports_a_part_above_it():
    upward = []
    for path in sorted(ROOT.rglob("*.py")):
        me = _part(path)
        for other in _imported_parts(ast.parse(path.read_text(encoding="utf-8"))):
            if other != me and other in RANK and RANK[other] >= RANK[me] and (me, other) not in ALLOWED:
                upward.append(f"{path.relative_to(ROOT)} imports vistrain.{other}")
    assert upward == []


def test_the_check_sees_function_level_imports():
    tree = ast.parse("def f():\n    from vistrain.evaluation.abstention import x\n    import vistrain.export.card\n")
    assert _imported_parts(tree) == {"evaluation", "export"}

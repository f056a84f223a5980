"""The Dockerfile's build context is enough to build vistrain (Docker itself is not available here)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _copied_paths(dockerfile: Path) -> list[str]:
    sources = []
    for line in dockerfile.read_text().splitlines():
        if line.startswith("COPY "):
            sources += line.split()[1:-1]  # COPY SRC... DEST
    return sources


def test_dockerfile_copies_what_the_build_needs(tmp_path):
    context = tmp_path / "app"
    context.mkdir()
    copied = _copied_paths(ROOT / "Dockerfile")
    assert "pyproject.toml" in copied and "src" in copied
    for name in copied:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, context / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(source, context / name)
    # The same build the image runs (`pip install --no-deps .`), as a wheel, with this venv's setuptools.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "wheels"), str(context)], check=True, cwd=tmp_path)
    wheel = next((tmp_path / "wheels").glob("vistrain-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "vistrain/serve/app.py" in names and "vistrain/cli.py" in names
    assert any(n.endswith("licenses/LICENSE") for n in names)
    # The serve extra the image installs lists no training dependency.
    serve = tomllib.loads((context / "pyproject.toml").read_text())["project"]["optional-dependencies"]["serve"]
    assert serve and not any(req.split("[")[0].split(">")[0].split("=")[0].strip() in ("torch", "timm") for req in serve)

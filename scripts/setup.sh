#!/usr/bin/env bash
# Create .venv (Python 3.11) with PyTorch and vistrain installed in editable mode, plus test tools.
# Idempotent: a second call with an unchanged pyproject.toml, setup.sh and constraints.txt does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
stamp=.venv/.vistrain-setup
want=$(sha1sum pyproject.toml scripts/setup.sh scripts/constraints.txt | sha1sum | cut -c1-40)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "Setting up .venv: PyTorch and vistrain's dependencies (a few minutes, the first time only)..."
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# pip's warnings are filtered out; a failed install still stops the setup (set -e sees pip's status).
pip_install() { .venv/bin/python -m pip install -q "$@" 2> >(grep -v -i "^warning" >&2 || true); }
pip_install --upgrade pip
# torch first and pinned: the release that this machine's wheel store carries (CPU is enough).
pip_install "torch==2.14.1" "torchvision==0.29.1"
# Within the versions the tests last passed with: a new release on PyPI cannot break CI unseen.
pip_install -c scripts/constraints.txt -e ".[dev]"
.venv/bin/python -c "import vistrain.api, torch; print('vistrain ready, torch', torch.__version__)"
echo "$want" > "$stamp"

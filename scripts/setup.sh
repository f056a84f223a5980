#!/usr/bin/env bash
# Create .venv (Python 3.11) with PyTorch and vistrain installed in editable mode, plus test tools.
# Idempotent: a second call with an unchanged pyproject.toml does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
stamp=.venv/.vistrain-setup
want=$(sha1sum pyproject.toml scripts/setup.sh | sha1sum | cut -c1-40)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "Setting up .venv: PyTorch and vistrain's dependencies (a few minutes, the first time only)..."
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v -i "^warning" || true
# torch first and pinned: the release that this machine's wheel store carries (CPU is enough).
.venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1" 2>&1 | grep -v -i "^warning" || true
.venv/bin/python -m pip install -q -e ".[dev]" 2>&1 | grep -v -i "^warning" || true
.venv/bin/python -c "import vistrain.api, torch; print('vistrain ready, torch', torch.__version__)"
echo "$want" > "$stamp"

#!/usr/bin/env bash
# Set up (if needed), write a small real example (scikit-learn's bundled handwritten digits, no
# download) as class folders, train on it, then classify a few of its images into a CSV.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
[ -d examples/digits ] || .venv/bin/python examples/make_digits.py examples/digits --per-class 40
.venv/bin/vistrain train examples/digits --out runs/digits --time-budget 240 "$@"
.venv/bin/vistrain predict runs/digits examples/digits/three examples/digits/seven --csv runs/digits/predictions.csv --top-k 2 | tail -n 6

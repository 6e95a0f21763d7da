#!/usr/bin/env bash
# Creates .venv and installs the core, the modality plugins and the test tools into it.
# Idempotent: a second run only reinstalls the editable packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip setuptools wheel
# Pinned here (CI and dev), ranges in the pyprojects.
python -m pip install -q torch==2.14.1 torchvision==0.29.1
pkgs=(-e ".[export,test]")
for d in plugins/*/; do
  [ -f "$d/pyproject.toml" ] && pkgs+=(-e "$d")
done
python -m pip install -q "${pkgs[@]}" pytest-xdist

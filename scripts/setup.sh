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
pkgs=(-e ".[int8,serve,test]" -e "plugins/text[spacy,test]" -e plugins/image -e plugins/timeseries -e plugins/llm -e plugins/dp)
python -m pip install -q "${pkgs[@]}" pytest-xdist
# WordNet 3.0 for text.synonyms (optional: its tests skip without it). Debian package.
if [ ! -d /usr/share/wordnet ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && apt-get install -y -qq wordnet-base) >/dev/null 2>&1 || \
    echo "setup: could not install wordnet-base; WordNet tests will be skipped" >&2
fi

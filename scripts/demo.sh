#!/usr/bin/env bash
# The README demo: set up, make a small private-looking text corpus, train a classifier
# on it end to end (clean, redact PII, tokenize, train, checkpoint, TensorBoard, export),
# then predict with the exported bundle.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python examples/make_text_data.py
privet run examples/text_classifier.yaml --name demo -s runs_dir=runs/demo-"$(date +%Y%m%d-%H%M%S)" "$@"

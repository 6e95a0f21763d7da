#!/usr/bin/env bash
# The README demo, end to end on a fresh machine: set up, make a small messy text corpus
# (HTML, e-mail addresses, phone and card numbers, duplicates, a broken line), train a
# classifier on it (clean, redact PII, tokenize, train, checkpoint, TensorBoard), export
# it to ONNX with its preprocessing, and predict new reviews with the bundle.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python examples/make_text_data.py
run_dir="examples/runs/demo-$(date +%Y%m%d-%H%M%S)"
PRIVET_RUN_DIR="$run_dir" privet run examples/text_classifier.yaml "$@"
echo
echo "== report: $run_dir/report.json"
python - "$run_dir" <<'PY'
import json, sys
r = json.load(open(f"{sys.argv[1]}/report.json"))
print("status:", r["status"], "| final:", {k: round(v, 4) for k, v in r["final"].items()})
print("records:", r["data"]["counts"], "| dropped:", r["data"]["dropped"])
print("cleaners:", r["data"]["cleaners"])
PY
echo
echo "== privet predict $run_dir/export examples/new_reviews.jsonl"
privet predict "$run_dir/export" examples/new_reviews.jsonl

#!/usr/bin/env bash
# The test command (README and .ci/run): set up, then run every test on 2 workers.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec python -m pytest -n 2 -q "$@"

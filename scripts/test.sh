#!/usr/bin/env bash
# The test command (README and .ci/run): set up, then run every test on 2 workers.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
# One intra-op thread per test process: two xdist workers share two cores, and
# subprocesses (torchrun workers, the launcher) inherit it.
export OMP_NUM_THREADS=1
exec python -m pytest -n 2 -q "$@"

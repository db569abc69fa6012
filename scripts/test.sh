#!/usr/bin/env bash
# Set up everything on a fresh machine and run the test suite. Extra arguments go to pytest.
# The SLURM tests need the local cluster, which needs root to install and start; RUNNER_SLURM=skip leaves it
# out, and those tests are then skipped with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup-venv.sh
if [ "${RUNNER_SLURM:-up}" != skip ]; then
  bash scripts/slurm-cluster.sh up
fi
exec .venv/bin/python -m pytest -q -rs "$@"

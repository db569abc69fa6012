#!/usr/bin/env bash
# Set up everything, then train the digits example twice: once uninterrupted, once under the local scheduler
# with 3 preemptions at random points. The two runs must end with the same accuracy table and parameters.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup-venv.sh
workdir=${1:-runs/digits}
# Remove only the two run folders this script writes, never the folder it is given.
rm -rf "$workdir/uninterrupted" "$workdir/preempted"
mkdir -p "$workdir"

echo "== uninterrupted run"
.venv/bin/python examples/split_digits.py --workdir "$workdir/uninterrupted"

echo "== preempted run under runner local"
.venv/bin/runner local --preempt-random 1:2 --seed 1 --max-preemptions 3 --grace 60 -- \
  .venv/bin/python examples/split_digits.py --workdir "$workdir/preempted"

echo "== comparison"
.venv/bin/python - "$workdir" <<'PY'
import json, sys
from pathlib import Path

workdir = Path(sys.argv[1])
reference = json.loads((workdir / "uninterrupted" / "final.json").read_text())
preempted = json.loads((workdir / "preempted" / "final.json").read_text())
print(f"restarts: {preempted['restarts']}")
print("accuracy after the last experience:", " ".join(f"{a:.3f}" for a in preempted["accuracy"][-1]))
same = reference["accuracy"] == preempted["accuracy"] and reference["params_sha256"] == preempted["params_sha256"]
print("same accuracy table and parameters as the uninterrupted run:", "yes" if same else "NO")
sys.exit(0 if same and preempted["restarts"] >= 3 else 1)
PY

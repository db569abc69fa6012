#!/usr/bin/env bash
# Create .venv with runner and what its tests and examples need. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build, while 2.13.0 is a quick CPU build here.
.venv/bin/pip install --quiet --disable-pip-version-check 'torch==2.13.0'
.venv/bin/pip install --quiet --disable-pip-version-check -e '.[test,examples]'

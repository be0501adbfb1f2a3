#!/usr/bin/env bash
# Sets everything up, then runs the whole test suite (offline; tiny random checkpoints built by the tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"

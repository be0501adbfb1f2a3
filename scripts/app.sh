#!/usr/bin/env bash
# Sets everything up, then starts the demo app (python app.py --help lists the options).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python app.py "$@"

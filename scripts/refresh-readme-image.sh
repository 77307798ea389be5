#!/usr/bin/env bash
# Refresh the README's QA montage (docs/images/sample-qa-montage.png) from a demo run. This is the one
# script that writes a tracked file: run it on purpose, look at the image, and commit it with the numbers
# of the run (steps, time) in the README.
#   scripts/refresh-readme-image.sh            run scripts/demo.sh (5-minute CPU budget), then copy
#   scripts/refresh-readme-image.sh --no-run   copy the montage of the last demo run
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" != "--no-run" ]]; then
    scripts/demo.sh "$@"
fi
mapfile -t montages < <(find work/sample -name qa_montage.png 2>/dev/null)
if (( ${#montages[@]} != 1 )); then
    echo "refresh-readme-image: expected one work/sample/**/qa_montage.png, found ${#montages[@]}: run scripts/demo.sh first" >&2
    exit 1
fi
mkdir -p docs/images
cp "${montages[0]}" docs/images/sample-qa-montage.png
echo "refresh-readme-image: docs/images/sample-qa-montage.png updated from ${montages[0]}"

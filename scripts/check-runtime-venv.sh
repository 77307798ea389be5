#!/usr/bin/env bash
# The product works with requirements.txt alone: run the README's first command (scripts/demo.sh) in a
# virtual environment made from requirements.txt only, with a few training steps, and check that
#   - every module of the application imports there (python -m app.packages --import-all names a missing one),
#   - the demo exits 0 and output/sample holds one derived series with one instance per sample slice,
#   - the demo changed no tracked file (git status is the same before and after).
# The environment is kept in .cache/runtime-venv (git-ignored) and made again from scratch whenever
# requirements.txt changes, so a package dropped from the file cannot linger in it. The demo's folders
# output/sample and work/sample are replaced. NSN2N_MAX_STEPS (default 10) sets the training steps.
set -euo pipefail
cd "$(dirname "$0")/.."
export VENV_DIR=.cache/runtime-venv
want="$(sha256sum <requirements.txt | cut -c1-16)"
if [[ -d "$VENV_DIR" && "$(cat "$VENV_DIR/.installed-requirements" 2>/dev/null)" != "$want" ]]; then
    echo "check-runtime-venv: requirements.txt changed: making $VENV_DIR again"
    rm -rf "$VENV_DIR"
fi
scripts/setup.sh
ulimit -s 32768
"$VENV_DIR/bin/python" -m app.packages --import-all

before="$(git status --porcelain --untracked-files=all)"
NSN2N_MAX_STEPS="${NSN2N_MAX_STEPS:-10}" scripts/demo.sh
after="$(git status --porcelain --untracked-files=all)"
if [[ "$before" != "$after" ]]; then
    echo "check-runtime-venv: FAILED: scripts/demo.sh changed the checkout:" >&2
    diff <(echo "$before") <(echo "$after") >&2 || true
    exit 1
fi
"$VENV_DIR/bin/python" - <<'PY'
from pathlib import Path

import pydicom

source = sorted(Path("tests/data/volume").glob("*.dcm"))
series: dict[str, list] = {}
for path in sorted(Path("output/sample").rglob("*")):
    if path.is_file():
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        series.setdefault(ds.SeriesInstanceUID, []).append(ds)
derived = [s for s in series.values() if "DERIVED" in s[0].get("ImageType", []) and s[0].Modality == "MR"]
assert len(derived) == 1, f"expected one derived MR series in output/sample, found {len(derived)}"
assert len(derived[0]) == len(source), f"{len(derived[0])} derived instances for {len(source)} sample slices"
print(f"check-runtime-venv: passed: {len(derived[0])} derived instances from requirements.txt alone")
PY

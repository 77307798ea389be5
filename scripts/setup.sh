#!/usr/bin/env bash
# Create (or refresh) the project virtual environment in .venv/ at the repository root.
#   scripts/setup.sh          runtime dependencies (requirements.txt)
#   scripts/setup.sh --dev    plus test/benchmark tools and the Debian packages used by the tests
#                             (DICOM tools, Orthanc, shellcheck, poppler; podman, runc and debootstrap for
#                             scripts/test-image.sh), the latter only when run as root
# VENV_DIR=DIR puts the environment elsewhere (scripts/check-runtime-venv.sh: requirements.txt alone).
# Idempotent: a stamp file records the hash of the requirement files, so a second call is instant.
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
[[ "${1:-}" == "--dev" ]] && dev=1
python_bin="${PYTHON:-python3.11}"
command -v "$python_bin" >/dev/null 2>&1 || python_bin=python3

venv="${VENV_DIR:-.venv}"
if [[ ! -x "$venv/bin/python" ]]; then
    echo "setup: creating $venv with $("$python_bin" --version)"
    "$python_bin" -m venv "$venv"
fi

req=requirements.txt
(( dev )) && req=requirements-dev.txt
stamp="$venv/.installed-$(basename "$req" .txt)"
files=(requirements.txt)
(( dev )) && files+=(requirements-dev.txt)
want="$(cat "${files[@]}" | sha256sum | cut -c1-16)"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    echo "setup: installing $req into $venv"
    # torch==2.13.0 is pinned: an unpinned torch would pull a multi-GB CUDA build.
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
    echo "$want" > "$stamp"
fi

if (( dev )); then
    # Real DICOM tools for the conformance and PACS tests (Debian packages).
    missing=()
    command -v dciodvfy >/dev/null 2>&1 || missing+=(dicom3tools)
    command -v storescu >/dev/null 2>&1 || missing+=(dcmtk)
    command -v Orthanc  >/dev/null 2>&1 || missing+=(orthanc)
    command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
    command -v pdftotext >/dev/null 2>&1 || missing+=(poppler-utils)
    command -v podman >/dev/null 2>&1 || missing+=(podman)
    command -v runc >/dev/null 2>&1 || missing+=(runc)
    command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
    if (( ${#missing[@]} )); then
        if [[ $(id -u) -eq 0 ]]; then
            echo "setup: installing Debian packages: ${missing[*]}"
            export DEBIAN_FRONTEND=noninteractive
            apt-get update -qq >/dev/null
            apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
        else
            echo "setup: warning: not root, cannot install ${missing[*]}; the tests that need them will be skipped" >&2
        fi
    fi
fi

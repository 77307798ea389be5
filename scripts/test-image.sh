#!/usr/bin/env bash
# Build the MAP image from ./Dockerfile with podman and run it on the bundled sample the way a host does.
#
#   scripts/test-image.sh      build (cached layers are reused), run, check; exit 0 when every check passed
#
# 1. Base image: BASE_IMAGE if set (any Debian 12 / Ubuntu 24.04 based image podman has or can pull),
#    else a Debian 12 (bookworm) root file system made by debootstrap from the host's Debian mirror and
#    imported with `podman import` (once; kept as localhost/nsn2n-base:bookworm-debootstrap).
# 2. `podman build` with the Dockerfile's BASE_IMAGE build argument. pip inside the build uses the host's
#    package index configuration and certificate bundle (scripts/host_pip_config.py: read from
#    `pip config list`, written to a temporary folder, mounted read-only; never into the repository).
# 3. The image is run as a host runs a MAP: no arguments, /var/holoscan/input = tests/data/volume mounted
#    read-only, /var/holoscan/output mounted, a non-root uid that is not the image's (any uid must work),
#    no network, NSN2N_MAX_STEPS training steps (default 10). Checks: exit code 0, one derived series
#    (DERIVED\SECONDARY, one file per source slice, same study, new series UID) plus the QA report, DICOM
#    only, owned by that uid. Then the verbs `show`, `env` and `extract`.
#
# Exit codes: 0 passed, 1 a check failed, 77 podman cannot run containers here (the message says why;
# scripts/test.sh reports it as skipped). Needs root for podman's default (rootful) storage and for
# debootstrap. Environment: BASE_IMAGE, NSN2N_MAX_STEPS, DEBIAN_MIRROR (default: the host's apt mirror),
# CONTAINERS_CONF (default: a generated one, below).
set -euo pipefail
cd "$(dirname "$0")/.."

SKIP=77
steps="${NSN2N_MAX_STEPS:-10}"
run_uid=4711
title="$(sed -n 's/^  title: *//p' app.yaml | head -n 1)"
version="$(sed -n 's/^  version: *//p' app.yaml | head -n 1)"
image="localhost/${title}:${version}"
default_base="localhost/nsn2n-base:bookworm-debootstrap"
base="${BASE_IMAGE:-$default_base}"
sample="$PWD/tests/data/volume"

say() { printf 'test-image: %s\n' "$*" >&2; }
fail() {
    say "FAILED: $*"
    exit 1
}

tmp="$(mktemp -d /tmp/nsn2n-test-image.XXXXXX)"
cleanup() { rm -rf "$tmp"; }
trap cleanup EXIT

# ------------------------------------------------------------------------------------------ can podman run?
if ! command -v podman >/dev/null 2>&1; then
    say "skipped: podman is not installed (Debian: apt-get install podman runc debootstrap; scripts/setup.sh --dev does it as root)"
    exit "$SKIP"
fi
if [[ $(id -u) -ne 0 ]]; then
    say "skipped: needs root (rootful podman storage, debootstrap); run it as root or on a machine with a Docker engine: see docs/deploy.md"
    exit "$SKIP"
fi
# Machines without systemd or with a restricted ulimit set (this project's CI machines): cgroupfs, runc,
# and no default ulimits (podman's defaults cannot be applied there). Only when the caller has no
# containers.conf of their own.
if [[ -z "${CONTAINERS_CONF:-}" ]]; then
    cat >"$tmp/containers.conf" <<'EOF'
[containers]
default_ulimits = []

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
EOF
    export CONTAINERS_CONF="$tmp/containers.conf"
fi
if ! probe="$(podman info 2>&1)"; then
    say "skipped: podman cannot run here: $(tail -n 1 <<<"$probe")"
    exit "$SKIP"
fi

# ---------------------------------------------------------------------------------------------- base image
t0=$SECONDS
if [[ "$base" == "$default_base" ]] && ! podman image exists "$base"; then
    if ! command -v debootstrap >/dev/null 2>&1; then
        say "skipped: debootstrap is not installed and BASE_IMAGE is not set"
        exit "$SKIP"
    fi
    mirror="${DEBIAN_MIRROR:-$(sed -n 's/^URIs: *\(http[^ ]*debian\)$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)}"
    mirror="${mirror:-http://deb.debian.org/debian}"
    say "making $base with debootstrap (bookworm, minbase) from $mirror"
    debootstrap --variant=minbase bookworm "$tmp/rootfs" "$mirror" >"$tmp/debootstrap.log" 2>&1 \
        || { tail -n 20 "$tmp/debootstrap.log" >&2; fail "debootstrap"; }
    tar -C "$tmp/rootfs" -c . | podman import --quiet - "$base" >/dev/null
    rm -rf "$tmp/rootfs"
fi
base_s=$((SECONDS - t0))

# --------------------------------------------------------------------------------------------------- build
python_bin=python3
[[ -x .venv/bin/python ]] && python_bin=.venv/bin/python
mapfile -t pip_volumes < <(python3 scripts/host_pip_config.py "$tmp/pip" "$python_bin")
build_args=(--format docker --network host --build-arg "BASE_IMAGE=$base" --build-arg "PIP_CONFIG_FILE=/run/host-pip/pip.conf")
for volume in "${pip_volumes[@]}"; do
    build_args+=(-v "$volume")
done
say "building $image on $base"
t0=$SECONDS
podman build "${build_args[@]}" -t "$image" -f Dockerfile . >"$tmp/build.log" 2>&1 \
    || { tail -n 40 "$tmp/build.log" >&2; fail "podman build (log above)"; }
build_s=$((SECONDS - t0))
# Earlier builds of this image, untagged by this one (2 GB each): only those carrying this image's title.
podman image prune -f --filter "label=org.opencontainers.image.title=$title" >/dev/null || true
# The build imported the application as root (a cached build skips that step): again, as the image's user.
podman run --rm --network none --entrypoint python3 -e PYTHONPATH=/opt/holoscan/app "$image" \
    -m app.packages --import-all 2>&1 | grep -E '^imported [0-9]+ modules' >&2 \
    || fail "the application does not import in the image"

# ----------------------------------------------------------------------------------------------------- run
in_image() { # run a command in the image with the MAP entrypoint replaced (used by the checks)
    podman run --rm --network none --entrypoint "$1" "${@:2}"
}
mkdir -p "$tmp/output"
chown "$run_uid:$run_uid" "$tmp/output"
say "running $image on $sample as uid $run_uid, NSN2N_MAX_STEPS=$steps"
t0=$SECONDS
set +e
# No --ulimit: with one, podman also sets its default nofile/nproc limits (1048576), which a machine
# without CAP_SYS_RESOURCE (this project's CI) refuses; the entrypoint raises the soft stack limit to the
# 32 MiB Holoscan wants itself (checked below), as it does under any host that leaves the hard limit open.
podman run --rm --network none --user "$run_uid:$run_uid" \
    -e "NSN2N_MAX_STEPS=$steps" \
    -v "$sample:/var/holoscan/input:ro" -v "$tmp/output:/var/holoscan/output" \
    "$image" >"$tmp/run.log" 2>&1
status=$?
set -e
run_s=$((SECONDS - t0))
tail -n 5 "$tmp/run.log" >&2
((status == 0)) || { tail -n 40 "$tmp/run.log" >&2; fail "the MAP exited with $status"; }
if grep -q 'below the recommended minimum' "$tmp/run.log"; then
    fail "Holoscan ran with a small stack: the entrypoint did not raise the limit"
fi
grep -q 'train: done' "$tmp/run.log" || fail "no training in the log"

owners="$(find "$tmp/output" -mindepth 1 -printf '%u\n' | sort -u)"
[[ "$owners" == "$run_uid" ]] || fail "output not owned by uid $run_uid alone: $owners"
in_image python3 -v "$tmp/output:/out:ro" -v "$sample:/in:ro" "$image" -c '
import sys
from pathlib import Path
import pydicom

source = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(Path("/in").glob("*.dcm"))]
folders = sorted(p for p in Path("/out").iterdir())
assert all(p.is_dir() for p in folders), f"output root holds files: {folders}"
series = {}
for folder in folders:
    files = sorted(folder.iterdir())
    datasets = [pydicom.dcmread(f) for f in files]  # raises if any file is not DICOM
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 1, folder
    series[folder.name] = datasets
derived = [d for d in series.values() if d[0].Modality == source[0].Modality]
assert len(derived) == 1, f"expected one derived {source[0].Modality} series, got {len(derived)}"
(datasets,) = derived
assert len(datasets) == len(source), f"{len(datasets)} derived instances for {len(source)} source slices"
for ds in datasets:
    assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"], ds.ImageType
    assert ds.StudyInstanceUID == source[0].StudyInstanceUID
    assert ds.SeriesInstanceUID != source[0].SeriesInstanceUID
    assert ds.pixel_array.shape == (source[0].Rows, source[0].Columns)
others = [d[0].SOPClassUID.name for k, d in series.items() if d is not datasets]
print(f"derived series: {len(datasets)} instances; other series: {others}")
' >&2 || fail "the output is not the expected derived series"

# ---------------------------------------------------------------------------------------------------- verbs
podman run --rm --network none "$image" show >"$tmp/show.txt" 2>&1 || fail "show exited non-zero"
grep -q '"sdkVersion": "4.0.0"' "$tmp/show.txt" || fail "show did not print app.json"
grep -q '"applicationRoot": "/opt/holoscan/app"' "$tmp/show.txt" || fail "show did not print pkg.json"
podman run --rm --network none "$image" env >"$tmp/env.txt" 2>&1 || fail "env exited non-zero"
grep -qx 'HOLOSCAN_INPUT_PATH=/var/holoscan/input' "$tmp/env.txt" || fail "env did not print the MAP environment"
mkdir -p "$tmp/export"
chown "$run_uid:$run_uid" "$tmp/export"
podman run --rm --network none --user "$run_uid:$run_uid" -v "$tmp/export:/var/run/holoscan/export" "$image" extract \
    >"$tmp/extract.log" 2>&1 || { cat "$tmp/extract.log" >&2; fail "extract exited non-zero"; }
for file in app/__main__.py app/app/packages.py config/app.json config/pkg.json config/app.yaml docs/README.md; do
    [[ -f "$tmp/export/$file" ]] || fail "extract did not produce $file"
done

# ------------------------------------------------------------------------- monai-deploy run (holoscan-cli 4.2.0)
# The MAP runner drives the `docker` command (python-on-whales). It runs through podman with these stand-ins,
# each for a Docker- or NVIDIA-specific check that says nothing about the MAP: `docker` -> podman; a
# `docker-buildx` file where the runner looks for it (it only checks that it exists); an `nvidia-ctk` that
# prints a version (checked because pkg.json requests a GPU); `--gpus all` (else it counts GPUs with
# nvidia-smi); `-n podman` (its default network "host" is a Docker built-in that podman does not list, so it
# tries to create it); and a container runtime named "nvidia" that is runc (it always asks for runtime
# nvidia). On a machine that refuses raising resource limits (no CAP_SYS_RESOURCE) the `docker` stand-in
# also drops the runner's --ulimit options. Parameters reach the app only through --config (the runner
# passes app.json's environment alone), so a copy of app.yaml sets the steps.
mar_s=-1
if [[ -x .venv/bin/monai-deploy ]]; then
    mar="$tmp/mar"
    mkdir -p "$mar/bin" "$mar/home/.docker/cli-plugins" "$mar/output"
    drop_ulimits=0
    podman run --rm --network none --entrypoint true --ulimit nofile=1048576:1048576 "$image" 2>/dev/null \
        || drop_ulimits=1
    # The stand-in's own code, written literally.
    # shellcheck disable=SC2016
    {
        echo '#!/usr/bin/env bash'
        echo '# docker -> podman for the MAP runner (written by scripts/test-image.sh)'
        echo 'args=()'
        echo 'skip=0'
        echo 'for a in "$@"; do'
        echo '    if ((skip)); then skip=0; continue; fi'
        if ((drop_ulimits)); then
            echo '    case "$a" in --ulimit) skip=1; continue ;; --ulimit=*) continue ;; esac'
        fi
        echo '    args+=("$a")'
        echo 'done'
        echo 'exec podman "${args[@]}"'
    } >"$mar/bin/docker"
    printf '#!/bin/sh\necho "stand-in: podman has no buildx"\n' >"$mar/home/.docker/cli-plugins/docker-buildx"
    printf '#!/bin/sh\necho "NVIDIA Container Toolkit CLI version 1.14.1 (stand-in)"\n' >"$mar/bin/nvidia-ctk"
    chmod +x "$mar/bin/docker" "$mar/bin/nvidia-ctk" "$mar/home/.docker/cli-plugins/docker-buildx"
    cp "$CONTAINERS_CONF" "$mar/containers.conf"
    printf '\n[engine.runtimes]\nnvidia = ["%s"]\n' "$(command -v runc)" >>"$mar/containers.conf"
    sed -E "s/^(  max_steps:) *[0-9]+/\1 $steps/" app.yaml >"$mar/app.yaml"
    grep -qE "^  max_steps: $steps\b" "$mar/app.yaml" || fail "could not set max_steps in the copy of app.yaml"
    chown "$run_uid:$run_uid" "$mar/output"
    say "running $image with monai-deploy run (holoscan-cli 4.2.0) through podman, uid $run_uid"
    t0=$SECONDS
    PATH="$mar/bin:$PATH" HOME="$mar/home" CONTAINERS_CONF="$mar/containers.conf" \
        .venv/bin/monai-deploy run -i "$sample" -o "$mar/output" --config "$mar/app.yaml" --gpus all -n podman \
        --uid "$run_uid" --gid "$run_uid" --rm "${image#localhost/}" >"$tmp/mar.log" 2>&1 \
        || { tail -n 30 "$tmp/mar.log" >&2; fail "monai-deploy run"; }
    mar_s=$((SECONDS - t0))
    written="$(find "$mar/output" -name '*.dcm' -not -path '*/.*' | wc -l)"
    expected=$(($(find "$sample" -name '*.dcm' | wc -l) + 1))
    ((written == expected)) \
        || fail "monai-deploy run wrote $written DICOM files, expected $expected (one per sample slice, the QA report)"
else
    say "monai-deploy run not tried: .venv/bin/monai-deploy is missing (scripts/setup.sh installs it)"
fi

size="$(podman image inspect --format '{{.Size}}' "$image")"
say "passed: base ${base_s} s, build ${build_s} s, run ${run_s} s, monai-deploy run ${mar_s} s" \
    "(${steps} steps, $(nproc) cores), image $((size / 1000000)) MB"

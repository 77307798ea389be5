#!/usr/bin/env bash
# Full-size quality benchmark on a GPU machine, inside a wall-clock deadline.
#
#   bench/run_gpu.sh OUT_DIR [DEADLINE_S]
#
# 1. simulates the noisy full-size report-set volumes once (16 processes, 3 seeds),
# 2. runs the learned methods on the GPU, alone, so that their seconds are honest
#    (main.md / main.log): thin and thick CT first, then lung1, then MR,
# 3. meanwhile runs the CPU baselines (NLM-3D, then BM4D when bench/.venv-bm4d was carried along:
#    the GPU machine has no network to create it) in other processes (cpu.md, bm4d.md, cpu.log),
# 4. with the GPU time left: NS-N2N and the oracle at 1200 steps, and NS-N2N at width 32, on ct-thin and
#    mr-thin-r5 (variants.md, variants-width32.md).
# BENCH_SPLIT=tuning runs the tuning set instead (for choosing defaults).
# Whatever is still running at the deadline is stopped; every table written so far stays.
# Needs: python3 with torch (CUDA), numpy, scipy, scikit-image, nibabel, pynrrd, and the source
# files in bench/.cache (lung1_image.nrrd, the three MNI .nii.gz).
set -u
out=${1:?usage: bench/run_gpu.sh OUT_DIR [DEADLINE_S]}
deadline=$((SECONDS + ${2:-560}))
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
left() { echo $((deadline - SECONDS)); }
preset=${BENCH_PRESET_FLAG:---full}  # --quick for a dry run of this script on a laptop
split=${BENCH_SPLIT:-report}
gpu=${BENCH_GPU_DEVICE:-cuda}
bench() {
  local t
  t=$(left)
  [ "$t" -gt 10 ] || { echo "skipped (deadline): $*" >&2; return 124; }
  timeout --signal=TERM --kill-after=5 "$t" "$py" -m bench.quality "$preset" --split "$split" "$@"
}

{
  date -u
  nvidia-smi -L || true
  "$py" -c 'import torch, numpy, scipy, skimage; print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-", "numpy", numpy.__version__, "scipy",
scipy.__version__, "skimage", skimage.__version__)'
  echo "== noise simulation"
} >"$out/setup.log" 2>&1
bench --methods noisy --workers 16 >>"$out/setup.log" 2>&1
echo "noise done at ${SECONDS}s" >>"$out/setup.log"

# CPU baselines in their own processes (they use no GPU).
( bench --device cpu --methods nlm3d,mean3,gauss --out "$out/cpu.md" >/dev/null 2>>"$out/cpu.log" ) &
( bench --device cpu --methods bm4d,bm4d-white --out "$out/bm4d.md" >/dev/null 2>>"$out/cpu.log" ) &

# Learned methods on the GPU, most important case first.
bench --device "$gpu" --methods noisy,nsn2n,nomask,zsn2n,oracle \
  --cases ct-thin,ct-thick,lung1,mr-thin-r5,mr-thin-r9,mr-thick-r5 --out "$out/main.md" >/dev/null
echo "main done at ${SECONDS}s" >>"$out/setup.log"

# With the GPU time left, the two levers the CPU tuning runs pointed at (bench/README.md, 2026-11-30):
# three times the steps, and a network twice as wide (the default budget and width: main.md has them).
bench --device "$gpu" --methods nsn2n,oracle --cases ct-thin,mr-thin-r5 --seeds 1 --steps 1200 \
  --out "$out/variants.md" >/dev/null
bench --device "$gpu" --methods nsn2n --cases ct-thin,mr-thin-r5 --seeds 1 --steps 400,1200 --set unet_width=32 \
  --out "$out/variants-width32.md" >/dev/null
echo "variants done at ${SECONDS}s" >>"$out/setup.log"
wait
echo "all done at ${SECONDS}s" >>"$out/setup.log"

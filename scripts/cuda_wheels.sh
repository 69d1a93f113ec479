#!/usr/bin/env bash
# Install the CUDA pieces Rill's kernels need to *compile* into .cuda/ at the repo root
# (gitignored): NVRTC (libnvrtc.so.12 and its builtins), the CUDA runtime headers
# (cuda_fp16.h, cuda_bf16.h, which NVRTC does not carry) and ptxas (for the register and
# spill report). They come from NVIDIA's PyPI wheels, so no CUDA toolkit and no GPU is
# needed; `rill_kernels::toolkit::Toolkit::find` looks here after RILL_CUDA_HOME,
# CUDA_HOME/CUDA_PATH and /usr/local/cuda. Idempotent: a complete .cuda/ is left alone
# (delete it to reinstall). Needs python3 with pip and access to PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."

# Pinned, so that the kernel cache key (which includes the NVRTC version) and the PTX
# are the same on every machine. 12.9 PTX loads on drivers for CUDA 12.9 and newer.
NVRTC="nvidia-cuda-nvrtc-cu12==12.9.86"
RUNTIME="nvidia-cuda-runtime-cu12==12.9.79"
NVCC="nvidia-cuda-nvcc-cu12==12.9.86"

DEST=.cuda
LIB="$DEST/nvidia/cuda_nvrtc/lib/libnvrtc.so.12"
INCLUDE="$DEST/nvidia/cuda_runtime/include"
PTXAS="$DEST/nvidia/cuda_nvcc/bin/ptxas"

complete() {
    [[ -f "$LIB" && -f "$INCLUDE/cuda_bf16.h" && -f "$INCLUDE/cuda_fp16.h" && -x "$PTXAS" ]]
}

if complete; then
    echo "cuda_wheels: $DEST/ already has NVRTC, the runtime headers and ptxas"
else
    echo "cuda_wheels: installing $NVRTC $RUNTIME $NVCC into $DEST/"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps --upgrade \
        --target "$DEST" "$NVRTC" "$RUNTIME" "$NVCC"
    # Some wheel versions ship ptxas without the executable bit.
    chmod +x "$PTXAS" 2>/dev/null || true
    if ! complete; then
        echo "cuda_wheels: install finished but pieces are missing under $DEST/:" >&2
        for f in "$LIB" "$INCLUDE/cuda_bf16.h" "$INCLUDE/cuda_fp16.h" "$PTXAS"; do
            [[ -e "$f" ]] || echo "  missing $f" >&2
        done
        exit 1
    fi
fi
echo "  nvrtc:   $LIB"
echo "  headers: $INCLUDE"
echo "  ptxas:   $PTXAS ($("$PTXAS" --version | tail -n 1))"

#!/usr/bin/env bash
# CI compile check of the CUDA kernels, on a machine with no GPU: NVRTC needs no driver. Puts
# PyPI's nvidia-cuda-nvrtc wheel (~60 MB download, never committed) in a cache folder once,
# then has `lora cuda-check --compile-only` (our own dlopen loader, Sources/CUDAShim) compile
# every kernel source to PTX (each entry point checked) and to CUBIN for sm_80 and sm_90, so
# a syntax error in a kernel fails CI. Skipped, with a message, when PyPI cannot be reached.
#   scripts/nvrtc_check.sh [path/to/lora]      (default .build/release/lora)
set -euo pipefail
cd "$(dirname "$0")/.."
lora=${1:-.build/release/lora}
version=13.5.37                 # pinned: the same compiler on every run
cache=${LORA_NVRTC_CACHE:-$HOME/.cache/lora/nvrtc-$version}
lib=$cache/nvidia/cu13/lib
if [ ! -e "$lib/libnvrtc.so.13" ]; then
  tmp=$cache.tmp.$$
  rm -rf "$tmp"
  if ! timeout 600 python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore --no-deps --target "$tmp" \
       "nvidia-cuda-nvrtc==$version" >&2; then
    rm -rf "$tmp"
    echo "SKIP nvrtc_check: could not install nvidia-cuda-nvrtc==$version from PyPI; the CUDA kernels were not compiled" >&2
    exit 0
  fi
  rm -rf "$cache"; mv "$tmp" "$cache"
fi
# The kernel cache is not used by --compile-only; LORA_PYTHON keeps the search to this folder.
LORA_CUDA_LIB_DIR=$lib LORA_PYTHON=/nonexistent "$lora" cuda-check --compile-only --arch 80,90

#!/usr/bin/env bash
# Issue 10's measurements on a random LLaMA-shaped checkpoint (scripts/make_big.py), one run each:
# generate (lora vs llama.cpp, peak RSS, tokens/s), finetune on the Q4_0 file with and without
# gradient checkpointing, and time per token at T = 512, 1024, 2048 (scripts/bench_big.py says how).
#   ~/.cache/lora/venv-ref/bin/python scripts/make_big.py --shape 7b     # ~25 GB in ~/.cache/lora/big/7b
#   scripts/bench_big.sh ~/.cache/lora/big/7b [--only gen|finetune|scaling,...] [--finetune 1:true,4:false]
# Needs a release build (.build/release/lora) and llama-cpp-python in ~/.cache/lora/venv-bench
# (scripts/bench.sh sets it up). Run on a quiet machine: every number moves with other load.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: scripts/bench_big.sh DIR [--only gen,finetune,scaling] [--finetune MB:CKPT,...]" >&2; exit 2; }
PY="${LORA_BENCH_PYTHON:-$HOME/.cache/lora/venv-bench/bin/python}"
[ -x "$PY" ] || { echo "no $PY: run scripts/bench.sh once (it creates the venv with llama-cpp-python)" >&2; exit 1; }
[ -x .build/release/lora ] || swift build -c release --product lora
exec "$PY" scripts/bench_big.py "$@"

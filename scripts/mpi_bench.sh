#!/usr/bin/env bash
# Time per optimizer step of `lora finetune` at 1 and 2 ranks on this machine, the cores split
# between ranks (1 rank x 2 threads, 2 ranks x 1 thread), and rank 0's time in the gradient
# allreduce. Needs the MPI build and a model (default: setup.sh's SmolLM2 GGUF).
#   scripts/mpi_bench.sh [MODEL] [STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
steps=${2:-4}
bin=${LORA_MPI_BINARY:-$PWD/.build-mpi/release/lora}
cores=$(nproc)
work=$(mktemp -d /tmp/lora-mpibench.XXXXXX); trap 'rm -rf "$work"' EXIT
python3 scripts/bench_data.py "$work/data.json" 64
# bench.sh's shape: r 8 on q_proj,v_proj, micro-batches of 4 x 256 tokens, int8 weights;
# global batch 8 = 2 micro-batches per step (1 per rank with 2 ranks).
args=(finetune --base-model "$model" --data-path "$work/data.json" --batch-size 8 --micro-batch-size 4
      --cutoff-len 256 --val-set-size 0 --max-steps "$steps" --logging-steps 1 --quantization int8 --warmup-steps 1)
echo "== 1 rank x $cores threads"
"$bin" "${args[@]}" --output-dir "$work/one" --threads "$cores" 2>&1 | grep -E "^step|^done"
echo "== 2 ranks x $((cores / 2)) threads"
mpirun --allow-run-as-root --oversubscribe --bind-to none -np 2 "$bin" "${args[@]}" --output-dir "$work/two" \
  --threads $((cores / 2 > 0 ? cores / 2 : 1)) 2>&1 | grep -E "^step|^done|^data parallel"
cmp "$work/one/adapter_model.safetensors" "$work/two/adapter_model.safetensors" && echo "adapters bit-identical"

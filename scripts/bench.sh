#!/usr/bin/env bash
# Benchmark: lora vs PyTorch + PEFT (training) and vs llama.cpp (generation) on the same model,
# data and settings, alternating peers, in one invocation. Prints a table (medians, min-max,
# ratios, peak RSS) and the machine. Not a test: run it by hand on a quiet machine.
#   scripts/bench.sh [ROUNDS] [STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
STEPS=${2:-5}
scripts/setup.sh
command -v /usr/bin/time >/dev/null || { SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo; $SUDO apt-get install -y -qq time >/dev/null; }
VENV="${XDG_CACHE_HOME:-$HOME/.cache}/lora/venv-bench"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import torch, transformers, peft, gguf, llama_cpp" 2>/dev/null; then
  echo "creating $VENV (torch, transformers, peft, gguf, llama-cpp-python from PyPI; llama-cpp-python compiles, minutes)" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q torch transformers peft gguf sentencepiece protobuf llama-cpp-python
fi
exec "$VENV/bin/python" scripts/bench.py --rounds "$ROUNDS" --steps "$STEPS"

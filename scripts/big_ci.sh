#!/usr/bin/env bash
# CI's run of BigModelTests: scripts/make_big.py writes the tiny shape (LLaMA layout, GQA, the
# vocabulary padded to 32000, ~65 MB in all) to a temporary folder, and the tests load each file,
# decode 4 tokens and hold the Q4_0 file kept quantized against its f32 dequantization. numpy,
# gguf and sentencepiece come from PyPI into .venv-big (once). BIG_SHAPE=1b runs the 1.1B shape
# (~4 GB of files, a few minutes: not in CI). Needs the release test build (scripts/test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-big
SHAPE="${BIG_SHAPE:-tiny}"
if ! "$VENV/bin/python" -c "import numpy, gguf, sentencepiece" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q numpy==2.4.6 gguf==0.19.0 sentencepiece==0.2.3
fi
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
"$VENV/bin/python" scripts/make_big.py --shape "$SHAPE" --out "$OUT"
LORA_BIG_DIR="$OUT/$SHAPE" swift test -c release --skip-build -Xswiftc -enable-testing --filter BigModelTests

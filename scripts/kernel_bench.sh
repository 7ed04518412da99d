#!/bin/sh
# Builds scripts/kernel_bench.c against the CKernels C sources (no Swift) and runs it, with
# clang when there is one: SwiftPM compiles them with clang, and gcc -O2's code for the
# intrinsics differs (the LLM.int8() VNNI product: 175 against 440 GOP/s on Zen 4). CC= to
# choose. Extra arguments go to the compiler, e.g. -DAVX2_KC_MAX=512 to try other blocking.
set -e
root=$(cd "$(dirname "$0")/.." && pwd)
out=${TMPDIR:-/tmp}/lora_kernel_bench
${CC:-$(command -v clang || echo gcc)} -O2 -fno-math-errno "$@" -I"$root/Sources/CKernels/include" -I"$root/Sources/CKernels" \
    "$root"/Sources/CKernels/*.c "$root/scripts/kernel_bench.c" -o "$out" -lpthread -lm
exec "$out"

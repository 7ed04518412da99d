#!/usr/bin/env bash
# The test suite under AddressSanitizer (Swift code; the C kernels and libsentencepiece are
# not instrumented). Release, as scripts/test.sh: debug numerics are too slow. Separate
# scratch path so it never mixes with the normal build. Extra arguments go to `swift test`
# (e.g. --filter). Benchmarks are skipped.
#   scripts/test_asan.sh [swift test arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
FLAGS=(-c release --scratch-path .build-asan -Xswiftc -enable-testing -Xswiftc -sanitize=address)
start=$SECONDS
swift build --build-tests "${FLAGS[@]}"
echo "asan build: $((SECONDS - start)) s"
# detect_leaks=0: the Swift runtime's caches and Foundation read buffers show up as leaks;
# what this run is for is out-of-bounds access and use after free.
export ASAN_OPTIONS=detect_leaks=0:${ASAN_OPTIONS:-}
start=$SECONDS
swift test "${FLAGS[@]}" --skip-build --skip TrainStepBenchmark "$@"
echo "asan tests: $((SECONDS - start)) s"

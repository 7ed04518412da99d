#!/usr/bin/env bash
# The test command: installs what the build needs (idempotent), then runs every test in a
# release build (numeric tests are 20-50x slower in debug), then the parity suites again with
# each kernel family this CPU can run forced by LORA_KERNELS. Fixtures are committed; no
# network is needed beyond Debian's archive.
#   scripts/test.sh            everything
#   scripts/test.sh --asan     the suite under AddressSanitizer (scripts/test_asan.sh)
#   scripts/test.sh ARGS...    passed to `swift test` (e.g. --filter MatmulTests)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--asan" ]; then shift; exec scripts/test_asan.sh "$@"; fi
# SwiftPM leaves an empty TemporaryDirectory.* in $TMPDIR per build or test invocation (about
# 40 per run): this run's temporary files go in a folder of its own, removed at exit.
RUN_TMP=$(mktemp -d "${TMPDIR:-/tmp}/lora-test.XXXXXX")
trap 'rm -rf "$RUN_TMP"' EXIT
export TMPDIR="$RUN_TMP"
scripts/install_deps.sh
swift build -c release --build-tests -Xswiftc -enable-testing
# The MPI variant (data-parallel finetune) in its own scratch path; MPITests run it under mpirun.
swift build -c release --traits MPI --scratch-path .build-mpi --product lora
export LORA_MPI_BINARY="$PWD/.build-mpi/release/lora"
swift test -c release --skip-build -Xswiftc -enable-testing "$@"
if [ $# -eq 0 ]; then
  parity='TrainingParityTests|ForwardParityTests|GenerationParityTests|MergeTests|ResumeTests|DoRATests|NF4Tests|GGUFKQuantTests|LLMInt8ParityTests'
  for k in $(.build/release/lora info --families); do
    echo "== parity suites with LORA_KERNELS=$k" >&2
    log="$RUN_TMP/parity-$k.log"
    if LORA_KERNELS=$k swift test -c release --skip-build -Xswiftc -enable-testing --filter "$parity" >"$log" 2>&1; then
      grep -E "Executed [0-9]+ tests" "$log" | tail -1
    else
      # The failing assertions in full (a summary line alone names no test).
      grep -E "error|failed|Executed [0-9]+ tests" "$log" | head -60
      echo "parity suites failed with LORA_KERNELS=$k" >&2; exit 1
    fi
  done
  echo "== lora serve's page in headless Chromium (scripts/test_browser.sh)" >&2
  scripts/test_browser.sh
  echo "== the openai Python client against lora serve (scripts/test_openai_client.py)" >&2
  python3 scripts/test_openai_client.py
  echo "== CUDA kernels compiled by NVRTC, no GPU needed (scripts/nvrtc_check.sh)" >&2
  scripts/nvrtc_check.sh
  echo "== BigModelTests on make_big.py's tiny shape (scripts/big_ci.sh)" >&2
  scripts/big_ci.sh
  echo "== fuzz targets, 20 s each (scripts/fuzz_ci.sh)" >&2
  scripts/fuzz_ci.sh
fi

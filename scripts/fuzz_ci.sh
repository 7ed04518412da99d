#!/usr/bin/env bash
# CI's fuzz pass: every target for 20 s from the committed corpus, so a parser regression
# that crashes on a known input (or close to one) fails the build.
set -euo pipefail
cd "$(dirname "$0")/.."
# A fixed seed: the same mutations every run, so a failure is this change's, reproducibly.
FUZZ_SEED=${FUZZ_SEED:-1} exec scripts/fuzz.sh all 20

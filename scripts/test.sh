#!/usr/bin/env bash
# The test command: installs what the build needs (idempotent), then runs every test in a
# release build (numeric tests are 20-50x slower in debug). Fixtures are committed; no network
# is needed beyond Debian's archive.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
swift build -c release --build-tests -Xswiftc -enable-testing
swift test -c release --skip-build -Xswiftc -enable-testing "$@"

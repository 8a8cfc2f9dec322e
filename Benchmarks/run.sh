#!/usr/bin/env bash
# Builds the benchmarks in release mode and runs them: `make bench` from the repository root.
# Options pass through to run.py (e.g. --rounds 5, --quick).
set -euo pipefail
cd "$(dirname "$0")"
../.ci/install-deps
mkdir -p .build
cc -O2 -Wall -o .build/uvbench reference/uvbench.c -luv
swift build -c release
python3 run.py --bin "$(swift build -c release --show-bin-path)/udp-bench" --ref .build/uvbench "$@"

#!/usr/bin/env bash
# Builds the benchmarks in release mode and runs them: `make bench` from the repository root.
# Options pass through to run.py (e.g. --rounds 5, --quick, --impls c,async,affine).
set -euo pipefail
cd "$(dirname "$0")"
../.ci/install-deps
mkdir -p .build
cc -O2 -Wall -Wextra -o .build/uvbench reference/uvbench.c -luv
cc -O2 -Wall -Wextra -o .build/rawbench reference/rawbench.c
swift build -c release
python3 run.py --bin "$(swift build -c release --show-bin-path)/udp-bench" --ref .build/uvbench --raw .build/rawbench "$@"

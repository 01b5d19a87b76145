#!/usr/bin/env bash
# One device call (issue #3): FC attention (gather, gather with compiled layer blocks, flex) vs dense causal
# attention (eager and compiled), training step, H100.
#   bash scripts/device_bench_attention.sh   (writes $OUT/bench/bench.json and the printed tables)
set -euo pipefail
source scripts/device_env.sh
timeout -k 10 560 python3 benchmarks/bench_attention.py --lengths 4096 15360 65536 \
    --impls gather gather+cb flex --dense-compiled --translation-length 15360 --extra-block-sizes \
    --compiled-lengths --profile-length 15360 --profile-impl gather --out "${OUT:-.}/bench" "$@"

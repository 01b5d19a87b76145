#!/usr/bin/env bash
# Decoding speed and exactness on the GPU (one device call, kind nvidia-h100-x1; docs/benchmarks.md):
#   bash scripts/device_bench_decode.sh [LENGTH]     # default 10000 tokens per sequence
# 1. benchmarks/bench_decode.py --check: cached logits vs the full forward (growing caches; static caches +
#    CUDA graph), then batch 1 and batch 8 with the score-note constraint (the imf render default);
# 2. batch 1 without the note constraint (--free-notes);
# 3. scripts/device_render_check.py: windows of a fixture score on CUDA play exactly the score's notes.
set -e
source scripts/device_env.sh
LENGTH=${1:-10000}
timeout 200 python3 benchmarks/bench_decode.py --device cuda --check --length "$LENGTH" --batches 1,8
timeout 60 python3 benchmarks/bench_decode.py --device cuda --length "$LENGTH" --batches 1 --free-notes
timeout 60 python3 scripts/device_render_check.py

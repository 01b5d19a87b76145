#!/usr/bin/env bash
# Decoding speed and exactness on the GPU (one device call, kind nvidia-h100-x1; docs/benchmarks.md):
#   bash scripts/device_bench_decode.sh [LENGTH]     # default 10000 tokens per sequence
# 1. benchmarks/bench_decode.py --check: cached logits vs the full forward (growing caches; static caches +
#    CUDA graph), then batch 1 and batch 8 with the score-note constraint (the imf render default);
# 2. the same with the compiled step (--compile; each shape's first, compiling run is timed apart);
# 3. the same with the shipped default model (instruct_museformer/assets/default_model).
source scripts/device_env.sh
LENGTH=${1:-10000}
timeout -k 5 150 python3 benchmarks/bench_decode.py --device cuda --check --length "$LENGTH" --batches 1,8
timeout -k 5 220 python3 benchmarks/bench_decode.py --device cuda --length "$LENGTH" --batches 1,8 --compile
timeout -k 5 180 python3 benchmarks/bench_decode.py --device cuda --length "$LENGTH" --batches 1,8 --compile \
    --checkpoint instruct_museformer/assets/default_model

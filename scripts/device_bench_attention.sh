#!/usr/bin/env bash
# One device call (issue #3): the gather path's kernels alone (indexed Triton kernels vs FlashAttention on
# gathered chunks), then the training step of FC attention (gather with the indexed kernels, the same with
# compiled layer blocks, gather with FlashAttention) vs dense causal attention (eager and compiled), H100.
#   bash scripts/device_bench_attention.sh   (writes $OUT/bench/bench.json, $OUT/kernels.txt, the tables)
set -euo pipefail
source scripts/device_env.sh
python3 -c "import triton; print('triton', triton.__version__)"
timeout -k 10 150 python3 benchmarks/bench_gather_kernels.py --lengths 15360 65536 | tee "${OUT:-.}/kernels.txt"
timeout -k 10 420 python3 benchmarks/bench_attention.py --lengths 4096 15360 65536 \
    --impls gather gather+cb gather-flash --dense-compiled --translation-length 15360 --extra-block-sizes \
    --compiled-lengths --profile-length 15360 --profile-impl gather --out "${OUT:-.}/bench" "$@"

#!/usr/bin/env bash
# One device call (issue #3): the training step of FC attention vs dense causal attention (eager and
# compiled), H100. First without attention dropout (the comparison): gather with the layouts
# prepared beforehand as imf train's data loader workers do (+prep), the same with compiled layer blocks,
# and gather building its own layouts; then with the recipe's attention dropout 0.1 in both models: the
# indexed kernels against FlashAttention on gathered chunks. Checks against the reference path first.
#   bash scripts/device_bench_attention.sh   (writes $OUT/bench/bench.json, $OUT/bench-dropout/bench.json)
set -euo pipefail
source scripts/device_env.sh
python3 -c "import triton; print('triton', triton.__version__)"
timeout -k 10 330 python3 benchmarks/bench_attention.py --lengths 4096 15360 65536 \
    --impls gather+prep gather+cb+prep gather --dense-compiled --translation-length 15360 --profile-length 0 \
    --extra-block-sizes --compiled-lengths --out "${OUT:-.}/bench" "$@"
timeout -k 10 200 python3 benchmarks/bench_attention.py --lengths 15360 65536 --impls gather+prep gather-flash+prep \
    --dense-compiled --attention-dropout 0.1 --translation-length 0 --profile-length 0 --extra-block-sizes \
    --compiled-lengths --skip-check --out "${OUT:-.}/bench-dropout" "$@"

#!/usr/bin/env bash
# Device calls (issue #3): the training step of FC attention vs dense causal attention (eager, compiled, and
# replayed from CUDA graphs), H100. Part "main": the checks against the reference path (kernels, dropout,
# graph replays), then the comparison without attention dropout -- gather with the layouts prepared
# beforehand as imf train's data loader workers do (+prep), and the same replayed from CUDA graphs (+graph;
# +cb: compiled layer blocks). Part "dropout": the recipe's attention dropout 0.1 in both models --
# FlashAttention on gathered chunks (auto) against the indexed kernels in graphs.
#   bash scripts/device_bench_attention.sh main|dropout   (writes $OUT/check, $OUT/bench, $OUT/bench-dropout)
set -euo pipefail
source scripts/device_env.sh
python3 -c "import triton; print('triton', triton.__version__)"
part=${1:-main}; shift || true
if [ "$part" = main ]; then
  timeout -k 10 150 python3 benchmarks/bench_attention.py --check-only --impls gather gather+prep+graph \
      --out "${OUT:-.}/check" "$@"
  timeout -k 10 390 python3 benchmarks/bench_attention.py --lengths 4096 15360 65536 \
      --impls gather+prep gather+prep+graph gather+cb+prep+graph --dense-compiled --dense-graph \
      --translation-length 15360 --profile-length 0 --extra-block-sizes --compiled-lengths --skip-check \
      --out "${OUT:-.}/bench" "$@"
else
  timeout -k 10 300 python3 benchmarks/bench_attention.py --lengths 15360 65536 \
      --impls gather-flash+prep gather-indexed+prep+graph --dense-compiled --dense-graph --attention-dropout 0.1 \
      --translation-length 0 --profile-length 0 --extra-block-sizes --compiled-lengths --skip-check \
      --out "${OUT:-.}/bench-dropout" "$@"
fi

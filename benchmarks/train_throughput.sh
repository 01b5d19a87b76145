#!/usr/bin/env bash
# Training throughput of the seed's configuration on one GPU (issue: training), fp16 and bf16, plus the
# largest --max-tokens that fits. Run on the device machine from the repository root, with the full
# (n)ASAP data-bin at $DATA (default .cache/data-bin/instruct_museformer). Peak memory is nvidia-smi's
# memory.used maximum during the run (allocator cache included, so an upper bound).
source scripts/device_env.sh
DATA=${DATA:-.cache/data-bin/instruct_museformer}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
SEED_FLAGS=(--user-dir museformer --task museformer_language_modeling --arch museformer_lm_v2s1
  --con2con '((((-2, 0), -4, -8, -12, -16, -24, -32),),)'
  --con2sum '((((None, -32), (-31, -24), (-23, -16), (-15, -12), (-11, -8), (-7, -4), -3,),),)'
  --num-layers 4 --tokens-per-sample 100000 --truncate-train 15360 --truncate-valid 10240
  --update-freq 1 --optimizer adam --adam-betas '(0.9, 0.98)' --adam-eps 1e-9
  --weight-decay 0.01 --lr 5e-4 --lr-scheduler inverse_sqrt --warmup-updates 16000 --max-update 1000000
  --validate-interval 1000000000 --save-interval 1000000000 --save-interval-updates 5000 --log-interval 10
  --num-workers 8 --beat-mask-ts True --take-bos-as-bar True --log-format simple --no-save --disable-validation)

measure() {  # name, seconds, extra flags...
  local name=$1 seconds=$2; shift 2
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$OUT/mem_$name.csv" &
  local smi=$!
  timeout "$seconds" python3 -m instruct_museformer train "$DATA" "${SEED_FLAGS[@]}" "$@" \
    --save-dir "/tmp/ckpt_$name" > "$OUT/train_$name.log" 2>&1
  local rc=$?
  kill $smi 2>/dev/null; wait $smi 2>/dev/null
  local peak=$(sort -n "$OUT/mem_$name.csv" | tail -1)
  local last=$(grep train_inner "$OUT/train_$name.log" | tail -1 | sed 's/.*| train_inner | //')
  local oom=$(grep -c -i "out of memory" "$OUT/train_$name.log")
  echo "$name rc=$rc peak_mem_MiB=$peak oom=$oom :: $last"
}
measure seed_fp16 120 --batch-size 1 --fp16
measure seed_bf16 120 --batch-size 1 --bf16
for tokens in 65536 131072 262144; do
  measure "max_tokens_$tokens" 75 --max-tokens "$tokens" --bf16 --max-update 20 --log-interval 5
done

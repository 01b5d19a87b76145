#!/usr/bin/env bash
# imf train with and without --cuda-graphs on the (n)ASAP data-bin at $DATA (one GPU): the seed's flags
# (batch size 1, --truncate-train 15360; on a translation data-bin the translation task), bf16, two epochs
# each (EAGER_EPOCHS=1: one eager epoch). The second epoch's summary line is the steady state (graphs
# recorded during the first).
#   DATA=data-bin/nasap bash scripts/device_train_graphs.sh
source scripts/device_env.sh
DATA=${DATA:-data-bin/nasap}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
FLAGS=(--task museformer_language_modeling --arch museformer_lm_v2s1
  --con2con '((((-2, 0), -4, -8, -12, -16, -24, -32),),)'
  --con2sum '((((None, -32), (-31, -24), (-23, -16), (-15, -12), (-11, -8), (-7, -4), -3,),),)'
  --num-layers 4 --tokens-per-sample 100000 --truncate-train 15360 --batch-size 1 --update-freq 1
  --optimizer adam --adam-betas '(0.9, 0.98)' --adam-eps 1e-9 --weight-decay 0.01 --lr 5e-4
  --lr-scheduler inverse_sqrt --warmup-updates 16000 --max-epoch 2 --log-interval 100 --num-workers 8
  --beat-mask-ts True --log-format simple --no-save --disable-validation --bf16 --seed 1)
for variant in eager graphs; do
  extra=(--max-epoch "${EAGER_EPOCHS:-2}")  # eager: epoch 1 runs at its steady rate already
  [ "$variant" = graphs ] && extra=(--cuda-graphs --cuda-graphs-max 320)
  start=$(date +%s)
  timeout -k 10 "${SECONDS_EACH:-250}" python3 -m instruct_museformer train "$DATA" "${FLAGS[@]}" "${extra[@]}" \
      "$@" > "$OUT/train_$variant.log" 2>&1
  echo "$variant rc=$? wall=$(( $(date +%s) - start ))s"
  grep -E "\| train \||CUDA graphs|num. model params|Error|error" "$OUT/train_$variant.log" | cut -c1-400
done

#!/usr/bin/env bash
# Trains the shipped default model (docs/model.md) on the (n)ASAP train split. Usage:
#   bash scripts/train_default_model.sh DATA-BIN SAVE-DIR [SECONDS]
# DATA-BIN comes from the README's main command. SECONDS bounds the run (checkpoints are written
# atomically every 250 updates, so a bounded run ends on a valid checkpoint_last).
set -uo pipefail
DATA=${1:?data-bin}; SAVE=${2:?save dir}; SECONDS_LIMIT=${3:-0}
run() { if [ "$SECONDS_LIMIT" -gt 0 ]; then timeout -k 15 "$SECONDS_LIMIT" "$@"; else "$@"; fi; }
run python3 -m instruct_museformer train "$DATA" \
  --task museformer_translation --arch museformer_translation_v2s1 \
  --attention-embed-dim 256 --ffn-embed-dim 1024 --num-attention-heads 4 --num-layers 4 --encoder-layers 4 \
  --tokens-per-sample 100000 --truncate-train 8192 --chunk-train --truncate-valid 8192 --max-tokens 32768 --update-freq 1 \
  --optimizer adam --adam-betas '(0.9, 0.98)' --adam-eps 1e-9 --weight-decay 0.01 --clip-norm 1.0 \
  --lr 1e-3 --lr-scheduler inverse_sqrt --warmup-updates 400 --max-update 100000 --bf16 \
  --dropout 0.1 --attention-dropout 0.1 --beat-mask-ts True --seed 1 --num-workers 8 \
  --disable-validation --save-interval-updates 250 --keep-interval-updates 12 --log-interval 25 \
  --log-format simple --save-dir "$SAVE" --tensorboard-logdir "$SAVE/tb"
rc=$?
[ "$rc" -eq 124 ] && echo "stopped after ${SECONDS_LIMIT}s as asked" && rc=0
exit $rc

# The default model on the device (docs/model.md), in back-to-back calls of the device tool, since one call
# may run 10 minutes: the save dir (checkpoints/, git-ignored) survives while the machine stays warm.
#   TRAIN_SECONDS > 0: train (resuming from the save dir) that long.
#   SELECT=1: validate the last interval checkpoints on 'valid', pick the best, measure it on 'test',
#   export it (float16).
# $OUT gets logs.tgz and default_model.tgz.part-* (the device tool returns files of at most 16 MiB).
source scripts/device_env.sh
DATA=.cache/data-bin/instruct_museformer
SAVE=${SAVE:-checkpoints/default}
LOG=/tmp/logs; mkdir -p $LOG
finish() { tar -C /tmp -czf $OUT/logs_phase$PHASE.tgz logs; }
trap finish EXIT
if [ "${TRAIN_SECONDS:-0}" -gt 0 ]; then
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 1000 > $LOG/mem_phase$PHASE.csv & smi=$!
  bash scripts/train_default_model.sh "$DATA" "$SAVE" "$TRAIN_SECONDS" > $LOG/train_phase$PHASE.log 2>&1
  kill $smi; echo "phase $PHASE peak MiB $(sort -n $LOG/mem_phase$PHASE.csv | tail -1)"
  grep -E "num. model params" $LOG/train_phase$PHASE.log; grep train_inner $LOG/train_phase$PHASE.log | tail -2
  ls $SAVE | tr '\n' ' '; echo
fi
[ "${SELECT:-0}" = 1 ] || exit 0
V=(--truncate-valid 8192 --truncate-test 8192 --max-tokens 32768 --attention-impl reference)
best=""; best_loss=999
for ck in $(ls -d $SAVE/checkpoint_*_* | sort -t_ -k3 -n | tail -${VALIDATE_LAST:-3}); do
  log=$LOG/validate_$(basename $ck).log
  timeout -k 5 ${VALIDATE_SECONDS:-60} python3 -m instruct_museformer validate "$DATA" --path "$ck" --valid-subset valid \
    "${V[@]}" > $log 2>&1
  loss=$(grep -oP "valid on 'valid' subset \| loss \K[\d.]+" $log)
  echo "$(basename $ck) valid loss ${loss:-failed}"
  if [ -n "$loss" ] && python3 -c "import sys; sys.exit(0 if $loss < $best_loss else 1)"; then best=$ck; best_loss=$loss; fi
done
best=${best:-$SAVE/checkpoint_last}
echo "best: $best ($best_loss bits)"
timeout -k 5 ${VALIDATE_SECONDS:-60} python3 -m instruct_museformer validate "$DATA" --path "$best" \
  --valid-subset valid,test "${V[@]}" > $LOG/validate_best.log 2>&1; grep -E "subset" $LOG/validate_best.log
python3 -c "
from pathlib import Path; from instruct_museformer.train.checkpoint import export_inference_checkpoint
export_inference_checkpoint(Path('$best'), Path('/tmp/default_model'))"
cp $best/trainer_state.json $LOG/ 2>/dev/null
ls -la /tmp/default_model
tar -C /tmp -cf - default_model | split -b 15M - $OUT/default_model.tar.part-

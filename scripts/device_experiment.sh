# One device call of an expression experiment (docs/model.md, "Levers"): train model variants side by side on
# the one GPU (resuming from their save dirs, which survive while the machine stays warm), meanwhile or
# afterwards render the pieces of an (n)ASAP split with any checkpoints and decoding options on the GPU and
# the CPU cores at once (scripts/render_queue.py), score them with `imf evaluate`, and print the table.
#
# Carried (git-ignored): .whl (scripts/device_env.sh), .cache/databin.tar.xz (a data-bin, unpacked to
# /tmp/data-bin), .cache/eval_<split>.tar.xz (scripts/pack_eval_split.py).
#   VARIANTS="a b"  FLAGS_a="..."  FLAGS_b="..."    extra imf train flags per variant (on top of RECIPE)
#   TRAIN_SECONDS=300                               training time of this call (0: none; SIGTERM then saves)
#   EXPORT=1                                        export each variant's checkpoint_last to exports/<variant>
#   DIAGNOSE="a b shipped"  DIAGNOSE_FLAGS=...      imf diagnose on the validation data (GPU; default one
#                                                   performance per piece)
#   RENDER="name=CKPT|flags;..."                    render SPLIT with these (CKPT: a folder, 'shipped' = default)
#   SPLIT=validation  RENDER_SECONDS=240  CUDA_WORKERS=4  CPU_WORKERS=10
#   SCORES="Bach__Fugue__bwv_856 ..."              render only these scores of SPLIT (default: all)
# $OUT gets logs.tgz, the evaluation JSONs and the exported models (float16, < 16 MiB each part).
source scripts/device_env.sh
set -u
START=$(date +%s)
LOG=/tmp/logs; mkdir -p $LOG exports renders
DATA=/tmp/data-bin
[ -d $DATA ] || { mkdir -p $DATA && tar -xJf .cache/databin.tar.xz -C $DATA --strip-components=1; }
finish() { tar -C /tmp -czf $OUT/logs.tgz logs; cp renders/*.json $OUT/ 2>/dev/null; }
trap finish EXIT
RECIPE=(--task museformer_translation --arch museformer_translation_v2s1
  --attention-embed-dim 256 --ffn-embed-dim 1024 --num-attention-heads 4 --num-layers 4 --encoder-layers 4
  --tokens-per-sample 100000 --truncate-train 8192 --chunk-train --truncate-valid 8192 --max-tokens 32768
  --optimizer adam --adam-betas '(0.9, 0.98)' --adam-eps 1e-9 --weight-decay 0.01 --clip-norm 1.0
  --lr 1e-3 --lr-scheduler inverse_sqrt --warmup-updates 400 --max-update 100000 --bf16 --cuda-graphs
  --dropout 0.1 --attention-dropout 0.1 --beat-mask-ts True --seed 1 --num-workers 4
  --disable-validation --save-interval-updates 250 --keep-interval-updates 4 --log-interval 50 --log-format simple)
pids=()
if [ "${TRAIN_SECONDS:-0}" -gt 0 ]; then
  for v in ${VARIANTS:-}; do
    flags_var="FLAGS_$v"; extra=${!flags_var:-}
    echo "train $v: ${extra}"
    (timeout --foreground -k 30 ${TRAIN_SECONDS} python3 -m instruct_museformer train $DATA "${RECIPE[@]}" $extra \
      --save-dir checkpoints/$v --tensorboard-logdir checkpoints/$v/tb >> $LOG/train_$v.log 2>&1) &
    pids+=($!)
  done
fi
render_split() {  # RENDER entries -> a job list (longest scores first) -> render_queue -> imf evaluate
  local split=${SPLIT:-validation}
  [ -d /tmp/eval_$split ] || { mkdir -p /tmp/eval_$split && tar -xJf .cache/eval_$split.tar.xz -C /tmp/eval_$split; }
  find renders -name '*.claim' -delete
  : > /tmp/jobs.tsv
  IFS=';' read -ra entries <<< "$RENDER"
  for score in $(ls -S /tmp/eval_$split/scores/*.musicxml); do
    [ -n "${SCORES:-}" ] && [[ " $SCORES " != *" $(basename ${score%.musicxml}) "* ]] && continue
    for entry in "${entries[@]}"; do
      name=${entry%%=*}; rest=${entry#*=}; ckpt=${rest%%|*}; flags=${rest#*|}
      [ "$ckpt" = shipped ] && ck="" || ck="--checkpoint $ckpt"
      printf '%s\t%s\t%s\n' "renders/$split/$name/$(basename ${score%.musicxml}).mid" "$score" \
        "$(echo --seed 1 $ck $flags | tr ' ' '\t')" >> /tmp/jobs.tsv
    done
  done
  python3 scripts/render_queue.py /tmp/jobs.tsv --workers cuda:${CUDA_WORKERS:-4},cpu:${CPU_WORKERS:-10} \
    --seconds ${RENDER_SECONDS:-240} --grace ${RENDER_GRACE:-45} > $LOG/render_$split.log 2>&1
  tail -1 $LOG/render_$split.log; grep -c "rc=0" $LOG/render_$split.log
  local workers=$(( 16 / ${#entries[@]} )); [ $workers -lt 2 ] && workers=2; local evals=()
  for entry in "${entries[@]}"; do  # the evaluations side by side
    name=${entry%%=*}
    timeout -k 5 ${EVAL_SECONDS:-150} python3 -m instruct_museformer evaluate --corpus nasap --root /tmp/eval_$split/nasap \
      --metadata /tmp/eval_$split/nasap/metadata.csv --split $split --renderings renders/$split/$name \
      --out renders/eval_${split}_$name.json --workers $workers --overall-only > $LOG/eval_${split}_$name.log 2>&1 &
    evals+=($!)
  done
  for p in "${evals[@]}"; do wait $p; done
  for entry in "${entries[@]}"; do
    name=${entry%%=*}
    echo "== $name ($split): $(ls renders/$split/$name/*.mid 2>/dev/null | wc -l) renderings"
    grep -E "^\|" $LOG/eval_${split}_$name.log | head -8
  done
}
if [ -n "${RENDER:-}" ] && [ "${RENDER_FIRST:-0}" = 1 ]; then render_split; fi   # on the CPU+GPU while training runs
for p in "${pids[@]}"; do wait $p; done
for v in ${VARIANTS:-}; do
  echo "== $v: $(grep -c train_inner $LOG/train_$v.log) log lines"; grep -E "train_inner|CUDA graphs" $LOG/train_$v.log | tail -2
done
if [ "${EXPORT:-0}" = 1 ]; then
  for v in ${VARIANTS:-}; do
    python3 -c "
from pathlib import Path; from instruct_museformer.train.checkpoint import export_inference_checkpoint
export_inference_checkpoint(Path('checkpoints/$v/checkpoint_last'), Path('exports/$v'))" && \
      tar -C exports -cf - $v | split -b 15M - $OUT/model_$v.tar.part-
  done
fi
for d in ${DIAGNOSE:-}; do  # side by side
  [ "$d" = shipped ] && ck="" || ck="--path exports/$d"
  timeout -k 5 ${DIAGNOSE_SECONDS:-120} python3 -m instruct_museformer diagnose $DATA $ck --device cuda \
    ${DIAGNOSE_FLAGS:---pairs-per-piece 1} --out renders/diagnose_$d.json > $LOG/diagnose_$d.log 2>&1 &
done
# the renders start beside the diagnoses (both use the GPU; the diagnoses are short)
if [ -n "${RENDER:-}" ] && [ "${RENDER_FIRST:-0}" != 1 ]; then render_split; fi
wait
for d in ${DIAGNOSE:-}; do echo "== diagnose $d"; grep "^|" $LOG/diagnose_$d.log; done
echo "call took $(( $(date +%s) - START )) s"

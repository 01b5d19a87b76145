# One device call (docs/model.md): bf16 throughput of the seed's configuration, then the default model,
# its validation/test loss, and a float16 inference copy under $OUT/default_model.
source scripts/device_env.sh
DATA=.cache/data-bin/instruct_museformer
timeout -k 10 70 python3 -m instruct_museformer train "$DATA" --arch museformer_lm_v2s1 --task museformer_language_modeling \
  --tokens-per-sample 100000 --truncate-train 15360 --batch-size 1 --bf16 --lr 5e-4 --warmup-updates 16000 \
  --log-interval 20 --num-workers 8 --beat-mask-ts True --no-save --disable-validation --log-format simple \
  > $OUT/seed_bf16.log 2>&1
grep train_inner $OUT/seed_bf16.log | tail -2
nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 > $OUT/mem_default.csv & smi=$!
bash scripts/train_default_model.sh "$DATA" checkpoints/default ${TRAIN_SECONDS:-390} > $OUT/train_default.log 2>&1
kill $smi; echo "default training peak MiB $(sort -n $OUT/mem_default.csv | tail -1)"
grep train_inner $OUT/train_default.log | tail -3
timeout -k 10 60 python3 -m instruct_museformer validate "$DATA" --path checkpoints/default/checkpoint_last \
  --valid-subset valid,test --truncate-test 8192 --truncate-valid 8192 --max-tokens 65536 > $OUT/validate.log 2>&1
tail -4 $OUT/validate.log
python3 -c "
from pathlib import Path; from instruct_museformer.train.checkpoint import export_inference_checkpoint
export_inference_checkpoint(Path('checkpoints/default/checkpoint_last'), Path('$OUT/default_model'))"
ls -la $OUT/default_model; cp checkpoints/default/checkpoint_last/trainer_state.json $OUT/

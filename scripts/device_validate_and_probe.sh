# One device call: perplexity of the default model on valid/test (reference attention, exact), bf16
# throughput of the seed's configuration, and the largest --max-tokens that fits (docs/benchmarks.md).
source scripts/device_env.sh
DATA=.cache/data-bin/instruct_museformer
python3 - <<'PY'
import json, shutil
shutil.copytree('.cache/default_model', '/tmp/dm_ref', dirs_exist_ok=True)
c = json.load(open('/tmp/dm_ref/config.json')); c['model']['attention_impl'] = 'reference'
json.dump(c, open('/tmp/dm_ref/config.json', 'w'))
PY
timeout -k 5 170 python3 -m instruct_museformer validate "$DATA" --path /tmp/dm_ref --valid-subset valid,test \
  --truncate-valid 8192 --truncate-test 8192 --max-tokens 16384 > $OUT/validate.log 2>&1; grep -E "valid on|subset" $OUT/validate.log | tail -3
SEED=(--arch museformer_lm_v2s1 --task museformer_language_modeling --tokens-per-sample 100000 --truncate-train 15360
  --lr 5e-4 --warmup-updates 16000 --num-workers 8 --beat-mask-ts True --no-save --disable-validation --log-format simple)
probe() { local name=$1 secs=$2; shift 2
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 250 > $OUT/mem_$name.csv & local smi=$!
  timeout -k 5 $secs python3 -m instruct_museformer train "$DATA" "${SEED[@]}" "$@" > $OUT/$name.log 2>&1
  kill $smi; echo "$name peak_MiB=$(sort -n $OUT/mem_$name.csv | tail -1) oom=$(grep -c -i 'out of memory' $OUT/$name.log) :: $(grep train_inner $OUT/$name.log | tail -1 | sed 's/.*train_inner | //')"; }
probe seed_bf16 115 --batch-size 1 --bf16 --log-interval 10
probe max_tokens_262144 100 --max-tokens 262144 --bf16 --log-interval 2
probe max_tokens_131072 95 --max-tokens 131072 --bf16 --log-interval 2

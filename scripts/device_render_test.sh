# One device call (docs/model.md, docs/benchmarks.md): render the (n)ASAP test pieces with the shipped default
# model on the GPU, plus the wall time of one whole test piece from MusicXML to MIDI. Needs the test scores
# as .cache/test_scores.tar.xz (Composer__Group__Piece.musicxml, from scripts/pack_test_scores.py).
# JOBS processes share the GPU, each rendering one piece at a time (batch 1, longest pieces first, all its
# pieces in one process: scripts/render_each.py), so what is finished when RENDER_SECONDS run out is kept;
# LIST (optional) names the pieces to render; FLAGS (optional) are extra imf render flags (e.g. --compile).
# $OUT gets renders.tgz (MIDIs, per-piece reports and logs).
source scripts/device_env.sh
tar -xJf .cache/test_scores.tar.xz -C /tmp
mkdir -p /tmp/renders/test
if [ -n "${ONE_PIECE:-}" ]; then
  start=$(date +%s.%N)
  timeout -k 10 120 python3 -m instruct_museformer render /tmp/test_scores/$ONE_PIECE.musicxml \
    -o /tmp/renders/one_piece.mid --device cuda --seed 1 ${FLAGS:-} > /tmp/renders/one_piece.log 2>&1
  echo "one piece ($ONE_PIECE) wall s: $(python3 -c "print(round($(date +%s.%N) - $start, 1))")"
  tail -2 /tmp/renders/one_piece.log
fi
if [ -n "${LIST:-}" ]; then sed 's|^|/tmp/test_scores/|; s|$|.musicxml|' "$LIST" > /tmp/list.txt
else ls -S /tmp/test_scores/*.musicxml > /tmp/list.txt; fi
worker() {  # every JOBS-th piece of the list, starting at $1, in one process
  awk -v k="$1" -v n="$JOBS" 'NR % n == k' /tmp/list.txt > /tmp/list$1.txt
  python3 scripts/render_each.py /tmp/list$1.txt /tmp/renders/test --device cuda --seed 1 ${FLAGS:-}
}
JOBS=${JOBS:-6}; start=$(date +%s)
for k in $(seq 0 $((JOBS - 1))); do worker $k > /tmp/renders/worker$k.log 2>&1 & done
while [ $(jobs -r | wc -l) -gt 0 ] && [ $(( $(date +%s) - start )) -lt ${RENDER_SECONDS:-420} ]; do sleep 5; done
pkill -f render_each.py; sleep 2
echo "rendered $(ls /tmp/renders/test/*.mid 2>/dev/null | wc -l) of $(wc -l < /tmp/list.txt) in $(( $(date +%s) - start ))s with $JOBS processes"
cat /tmp/renders/worker*.log | sort -t= -k2 | tail -n 60
tar -C /tmp -czf $OUT/renders.tgz renders

# One device call (docs/model.md, docs/benchmarks.md): render every (n)ASAP test piece with the shipped default
# model on the GPU, plus the wall time of one whole test piece from MusicXML to MIDI. Needs the test scores
# as .cache/test_scores.tar.xz (Composer__Group__Piece.musicxml, built from the archive by
# scripts/pack_test_scores.py). $OUT gets renders.tgz (MIDIs, report, log).
source scripts/device_env.sh
tar -xJf .cache/test_scores.tar.xz -C /tmp
mkdir -p /tmp/renders
ONE=${ONE_PIECE:-Beethoven__Piano_Sonatas__8-2}
start=$(date +%s.%N)
timeout -k 10 120 python3 -m instruct_museformer render /tmp/test_scores/$ONE.musicxml -o /tmp/renders/one_piece.mid \
  --device cuda --seed 1 > /tmp/renders/one_piece.log 2>&1
echo "one piece ($ONE) wall s: $(python3 -c "print(round($(date +%s.%N) - $start, 1))")"; tail -2 /tmp/renders/one_piece.log
start=$(date +%s.%N)
timeout -k 10 ${RENDER_SECONDS:-420} python3 -m instruct_museformer render /tmp/test_scores -o /tmp/renders/test \
  --device cuda --seed 1 --report /tmp/renders/report.json > /tmp/renders/render.log 2>&1
echo "test split rc=$? wall s: $(python3 -c "print(round($(date +%s.%N) - $start, 1))")"; tail -3 /tmp/renders/render.log
tar -C /tmp -czf $OUT/renders.tgz renders

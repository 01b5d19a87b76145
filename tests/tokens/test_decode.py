"""Decoding: agrees with MidiTok's own REMI decoder, tolerates any id sequence, score tokens."""

from __future__ import annotations

import random
from pathlib import Path

import miditok
import pytest

from instruct_museformer.tokens import specials
from instruct_museformer.tokens.pair import tokenize_pair
from instruct_museformer.tokens.performance import decode_performance
from instruct_museformer.tokens.remi import to_remi_order
from instruct_museformer.tokens.score import tokenize_score

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
BEETHOVEN = FIXTURES / "nasap" / "Beethoven" / "Piano_Sonatas" / "21-2"
MOZART = FIXTURES / "partitura_mozart_k265_var1" / "tests" / "data"


@pytest.fixture(scope="module")
def pair(tokenizer):
    return tokenize_pair(BEETHOVEN / "xml_score.musicxml", BEETHOVEN / "KimSY03.mid", tokenizer,
                         alignment=BEETHOVEN / "KimSY03_note_alignments" / "note_alignment.tsv")


def _notes(score):
    return sorted((n.time, n.pitch, n.velocity, n.duration) for t in score.tracks for n in t.notes)


def test_same_as_miditok_decoder(tokenizer, pair):
    ours = decode_performance(pair.perf_ids, tokenizer)
    theirs = tokenizer.decode([miditok.TokSequence(ids=to_remi_order(pair.perf_ids))])
    assert _notes(ours) == _notes(theirs)
    assert [(t.time, t.mspq) for t in ours.tempos] == [(t.time, t.mspq) for t in theirs.tempos]
    pedals = [[(p.time, p.duration) for p in score.tracks[0].pedals] for score in (ours, theirs)]
    assert pedals[0] == pedals[1] and pedals[0]
    assert [(s.time, s.numerator, s.denominator) for s in ours.time_signatures] == [(0, 6, 8)]


def test_remi_order_moves_bar_to_the_front(pair):
    remi = to_remi_order(pair.perf_ids)
    assert len(remi) == len(pair.perf_ids) and remi[0] == specials.BAR
    assert remi.count(specials.BAR) == pair.num_bars


def test_decoded_midi_beats_are_played_beats(tokenizer, pair):
    """Bar lines of the decoded MIDI fall where the pianist played the downbeats."""
    score = decode_performance(pair.perf_ids, tokenizer)
    assert len(score.tempos) > pair.num_bars  # a tempo per beat, not one per piece
    seconds = score.to("second")
    first = min(n.time for n in seconds.tracks[0].notes)
    assert first < 0.5


def test_any_sequence_decodes(tokenizer):
    rng = random.Random(0)
    size = len(tokenizer)
    for length in (0, 1, 5, 300):
        for _ in range(20):
            ids = [rng.randrange(-3, size + 5) for _ in range(length)]
            score = decode_performance(ids, tokenizer)
            assert score.tpq == tokenizer.time_division
            for note in score.tracks[0].notes:
                assert note.duration > 0 and 0 <= note.velocity <= 127


def test_incomplete_notes_and_eos(tokenizer):
    v = tokenizer.vocab
    ids = [v["TimeSig_3/4"], v["Position_0"], v["Pitch_60"], v["Position_48"], v["Pitch_62"], v["Velocity_99"],
           specials.BAR, v["Position_0"], v["Pitch_64"], v["Velocity_35"], v["Duration_1.0.16"], specials.EOS,
           v["Position_2"], v["Pitch_70"], v["Velocity_35"], v["Duration_1.0.16"]]
    score = decode_performance(ids, tokenizer)
    notes = [(n.time, n.pitch, n.velocity) for n in score.tracks[0].notes]
    tpq = tokenizer.time_division
    assert notes == [(0, 60, 64), (tpq, 62, 99), (3 * tpq, 64, 35)]  # stops at EOS; defaults filled in
    assert score.time_signatures[0].numerator == 3


def test_score_tokens(tokenizer):
    ids = tokenize_score(MOZART / "musicxml" / "mozart_k265_var1.musicxml", tokenizer)
    assert ids.count(specials.BAR) == 24 and ids[-1] == specials.BAR
    names = [tokenizer[i] for i in ids]
    assert names[0] == "TimeSig_2/4"
    assert sum(n.startswith("Tempo_") for n in names) == 1
    assert not any(n.startswith("Pedal") for n in names)
    midi_ids = tokenize_score(BEETHOVEN / "midi_score.mid", tokenizer)
    assert midi_ids[-1] == specials.BAR and midi_ids.count(specials.BAR) >= 28


def test_written_midi_file_keeps_the_timing(tokenizer, pair, tmp_path):
    from symusic import Score

    score = decode_performance(pair.perf_ids, tokenizer)
    path = tmp_path / "performance.mid"
    score.dump_midi(str(path))
    reread = Score(str(path), ttype="second")
    in_memory = score.to("second")
    a = sorted((n.time, n.pitch) for n in in_memory.tracks[0].notes)
    b = sorted((n.time, n.pitch) for n in reread.tracks[0].notes)
    assert len(a) == len(b) and max(abs(x[0] - y[0]) for x, y in zip(a, b, strict=True)) < 1e-3
    assert len(reread.tracks[0].pedals) == len(in_memory.tracks[0].pedals)


def test_a_key_is_never_struck_while_it_sounds(tokenizer, tmp_path):
    """Overlapping notes of one pitch (a model may emit them) come out cut, so MIDI readers keep them all."""
    import partitura

    vocab_ids = tokenizer.vocab
    pos = [vocab_ids[f"Position_{p}"] for p in (0, 12, 12, 24)]
    long = vocab_ids[next(t for t in vocab_ids if t.startswith("Duration_2."))]
    vel = [vocab_ids[t] for t in ("Velocity_63", "Velocity_95")]
    pitch = vocab_ids["Pitch_60"]
    ids = [vocab_ids["TimeSig_4/4"], pos[0], pitch, vel[0], long, pos[1], pitch, vel[0], long, pitch, vel[1], long,
           pos[3], pitch, vel[0], long, specials.BAR]
    score = decode_performance(ids, tokenizer)
    notes = sorted((n.time, n.duration, n.velocity) for n in score.tracks[0].notes)
    assert len(notes) == 3 and notes[0][0] < notes[1][0] < notes[2][0]
    assert all(a[0] + a[1] <= b[0] for a, b in zip(notes[:-1], notes[1:], strict=True))  # no overlap
    assert notes[1][2] == 95  # of two strikes at one tick, the louder stays
    path = tmp_path / "repeated.mid"
    score.dump_midi(path)
    assert len(partitura.load_performance_midi(str(path)).note_array()) == 3

"""Pairs: equal bar counts on both sides for every alignment source, closing Bar, round-trip figures."""

from __future__ import annotations

from pathlib import Path

import pytest

from instruct_museformer.tokens import specials
from instruct_museformer.tokens.pair import roundtrip_errors, tokenize_pair

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
BACH = FIXTURES / "nasap" / "Bach" / "Prelude" / "bwv_854"
BEETHOVEN = FIXTURES / "nasap" / "Beethoven" / "Piano_Sonatas" / "21-2"
MOZART = FIXTURES / "partitura_mozart_k265_var1" / "tests" / "data"


def _bars(ids):
    return ids.count(specials.BAR)


def _check_pair(pair):
    assert _bars(pair.score_ids) == _bars(pair.perf_ids) == pair.num_bars > 0
    assert pair.score_ids[-1] == specials.BAR and pair.perf_ids[-1] == specials.BAR
    assert specials.EOS not in pair.perf_ids and specials.PAD not in pair.score_ids


@pytest.mark.parametrize("piece, performer, bars", [(BACH, "LuA01M", 24), (BEETHOVEN, "KimSY03", 28)])
def test_note_alignment_pair(tokenizer, piece, performer, bars):
    pair = tokenize_pair(piece / "xml_score.musicxml", piece / f"{performer}.mid", tokenizer,
                         alignment=piece / f"{performer}_note_alignments" / "note_alignment.tsv")
    _check_pair(pair)
    assert pair.num_bars == bars
    # Performance bar k is the performance of score bar k: aligned notes land in the same bar.
    assert pair.info["bar_agreement"] >= 0.99


def test_annotation_pairs_xml_and_midi_score(tokenizer):
    xml = tokenize_pair(BEETHOVEN / "xml_score.musicxml", BEETHOVEN / "Sekino05.mid", tokenizer,
                        annotations=BEETHOVEN / "Sekino05_annotations.txt")
    midi = tokenize_pair(BEETHOVEN / "midi_score.mid", BEETHOVEN / "Sekino05.mid", tokenizer,
                         annotations=BEETHOVEN / "Sekino05_annotations.txt",
                         score_annotations=BEETHOVEN / "midi_score_annotations.txt")
    for pair in (xml, midi):
        _check_pair(pair)
    assert xml.num_bars == midi.num_bars == 28


def test_match_file_pair(tokenizer):
    pair = tokenize_pair(MOZART / "musicxml" / "mozart_k265_var1.musicxml", MOZART / "midi" / "mozart_k265_var1.mid",
                         tokenizer, match=MOZART / "match" / "mozart_k265_var1.match")
    _check_pair(pair)
    assert pair.num_bars == 24
    result = roundtrip_errors(pair, tokenizer)
    assert result["onset_aligned"]["n"] >= 200


@pytest.mark.parametrize("piece, performer", [(BACH, "WangA01M"), (BEETHOVEN, "YOO05M")])
def test_roundtrip_within_targets(tokenizer, piece, performer):
    pair = tokenize_pair(piece / "xml_score.musicxml", piece / f"{performer}.mid", tokenizer,
                         alignment=piece / f"{performer}_note_alignments" / "note_alignment.tsv")
    result = roundtrip_errors(pair, tokenizer)
    assert result["notes_decoded"] == result["notes"]
    assert result["onset_aligned"]["n"] > 0.9 * result["notes"]
    assert result["onset_aligned"]["median_ms"] <= 10.0
    assert result["onset_aligned"]["p95_ms"] <= 30.0
    assert result["onset_all"]["p95_ms"] <= 30.0
    assert result["velocity"]["within_step"] == 1.0
    assert result["pedal"]["n"] == result["pedal_changes"] > 0
    assert result["pedal"]["p95_ms"] <= 30.0


def _shifted_performance(tokenizer, tmp_path, shift, notes=(), pedals=()):
    """KimSY03 played ``shift`` seconds later (its note alignment moved with it), plus extra notes / pedals
    given as (time, duration, pitch) / (time, duration) in seconds of the shifted file."""
    from symusic import ControlChange, Note, Score

    score = Score(str(BEETHOVEN / "KimSY03.mid"), ttype="second")
    track = score.tracks[0]
    for item in (*track.notes, *track.controls):  # a MIDI file keeps the pedal as CC64 events
        item.time += shift
    track.notes.extend(Note(t, d, pitch, 80, ttype="second") for t, d, pitch in notes)
    for t, d in pedals:
        track.controls.extend([ControlChange(t, 64, 127, ttype="second"), ControlChange(t + d, 64, 0, ttype="second")])
    track.controls.sort(key=lambda c: c.time)
    path = tmp_path / "shifted.mid"
    score.dump_midi(str(path))
    lines = (BEETHOVEN / "KimSY03_note_alignments" / "note_alignment.tsv").read_text().splitlines()
    rows = [lines[0]]
    for line in lines[1:]:
        fields = line.split("\t")
        if fields[1] != "deletion":
            fields[5] = str(float(fields[5]) + shift)
        rows.append("\t".join(fields))
    tsv = tmp_path / "note_alignment.tsv"
    tsv.write_text("\n".join(rows) + "\n")
    return tokenize_pair(BEETHOVEN / "xml_score.musicxml", path, tokenizer, alignment=tsv)


def test_stray_notes_are_clamped_into_the_first_and_last_bar(tokenizer, tmp_path):
    """A key pressed long before the piece and one long after it land in bar 1 / the last bar."""
    from symusic import Score

    shift = 45.0  # make room before the piece for the early stray note
    last = max(n.time for n in Score(str(BEETHOVEN / "KimSY03.mid"), ttype="second").tracks[0].notes) + shift
    pair = _shifted_performance(tokenizer, tmp_path, shift, notes=[(1.0, 0.2, 100), (last + 60.0, 0.2, 101)])
    _check_pair(pair)
    assert pair.num_bars == 28
    names = [tokenizer[i] for i in pair.perf_ids]
    assert names[: names.index("Pitch_100")].count("Bar_None") == 0
    assert names[: names.index("Pitch_101")].count("Bar_None") == 27
    result = roundtrip_errors(pair, tokenizer)
    assert result["onset_aligned"]["median_ms"] <= 10.0 and result["onset_aligned"]["p95_ms"] <= 30.0


def test_a_pedal_before_the_first_note_counts_from_it(tokenizer, tmp_path):
    """KimSY03 presses the pedal 0.27 s before its first note: the pedal starts with that note, the opening
    beat starts there too (it was stretched back to the press: a slower opening Tempo, the first note
    late in the bar); a press released before the first note changes nothing."""
    shift = 5.0
    plain = _shifted_performance(tokenizer, tmp_path, shift)
    early = _shifted_performance(tokenizer, tmp_path, shift, pedals=[(2.0, 1.0)])
    _check_pair(plain)
    assert early.perf_ids == plain.perf_ids
    names = [tokenizer[i] for i in plain.perf_ids]
    opening = names[1:5]
    assert opening[0] == "Position_0" and opening[1].startswith("Tempo_") and opening[2] == "Pedal_0"
    assert opening[3].startswith("Pitch_")
    result = roundtrip_errors(plain, tokenizer)
    assert result["pedal"]["p95_ms"] <= 30.0

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

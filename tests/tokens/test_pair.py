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


def test_stray_notes_are_clamped_into_the_first_and_last_bar(tokenizer, tmp_path):
    """A key pressed long before the piece and one long after it land in bar 1 / the last bar."""
    from symusic import Note, Score

    shift = 45.0  # make room before the piece for the early stray note
    score = Score(str(BEETHOVEN / "KimSY03.mid"), ttype="second")
    track = score.tracks[0]
    for item in (*track.notes, *track.pedals):
        item.time += shift
    last = max(n.time for n in track.notes)
    track.notes.append(Note(1.0, 0.2, 100, 80, ttype="second"))
    track.notes.append(Note(last + 60.0, 0.2, 101, 80, ttype="second"))
    path = tmp_path / "stray.mid"
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
    pair = tokenize_pair(BEETHOVEN / "xml_score.musicxml", path, tokenizer, alignment=tsv)
    _check_pair(pair)
    assert pair.num_bars == 28
    names = [tokenizer[i] for i in pair.perf_ids]
    assert names[: names.index("Pitch_100")].count("Bar_None") == 0
    assert names[: names.index("Pitch_101")].count("Bar_None") == 27
    result = roundtrip_errors(pair, tokenizer)
    assert result["onset_aligned"]["median_ms"] <= 10.0 and result["onset_aligned"]["p95_ms"] <= 30.0

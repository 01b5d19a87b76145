"""Pairs the beat annotations cannot place, recovered through a note alignment nobody vouched for, and
refused where that alignment says the performance left the score (tokens.pair, tokens.trust; the
synthetic pieces of ``synthetic_pieces``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from synthetic_pieces import bar_pitches, piece, pitch_of

from instruct_museformer.tokens.errors import TokenizationError
from instruct_museformer.tokens.pair import tokenize_pair

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
BEETHOVEN = FIXTURES / "nasap" / "Beethoven" / "Piano_Sonatas" / "21-2"


def test_skipped_repeat_is_tokenized_along_the_path_played(tokenizer, tmp_path):
    """|: 1 2 :| 3 4 played without the repeat: the annotations (4 downbeats) do not fit the maximal
    unfolding (6 bars), so the pair was refused; the alignment's ids name the path played (pass 1 only)
    and the pair is tokenized on 4 bars, performance bar k playing score bar k."""
    made = piece(tmp_path, 4, [1, 2, 3, 4], repeat=(1, 2))
    with pytest.raises(TokenizationError) as refused:
        tokenize_pair(made["score"], made["performance"], tokenizer, annotations=made["annotations"])
    assert refused.value.reason == "bar mismatch"

    pair = tokenize_pair(made["score"], made["performance"], tokenizer, annotations=made["annotations"],
                         unverified_alignment=made["alignment"])
    assert pair.num_bars == 4 and pair.source == "note_alignment"
    expected = [{pitch_of(bar)} for bar in (1, 2, 3, 4)]
    assert bar_pitches(pair.score_ids, tokenizer) == expected
    assert bar_pitches(pair.perf_ids, tokenizer) == expected
    assert pair.info["bar_agreement"] == 1.0


def test_fixture_pair_with_broken_annotations_is_recovered_exactly(tokenizer, tmp_path):
    """A real (n)ASAP pair whose annotations lose a downbeat is refused on them alone, and tokenized through
    its note alignment as an unverified one into exactly the tokens of that alignment used directly."""
    lines = (BEETHOVEN / "KimSY03_annotations.txt").read_text().splitlines()
    second = [i for i, line in enumerate(lines) if line.split("\t")[2].startswith("db")][1]
    broken = tmp_path / "KimSY03_annotations.txt"
    broken.write_text("\n".join(lines[:second] + lines[second + 1:]) + "\n")
    score, performance = BEETHOVEN / "xml_score.musicxml", BEETHOVEN / "KimSY03.mid"
    alignment = BEETHOVEN / "KimSY03_note_alignments" / "note_alignment.tsv"
    with pytest.raises(TokenizationError, match="bar mismatch|annotated bars"):
        tokenize_pair(score, performance, tokenizer, annotations=broken)
    recovered = tokenize_pair(score, performance, tokenizer, annotations=broken, unverified_alignment=alignment)
    direct = tokenize_pair(score, performance, tokenizer, alignment=alignment)
    assert recovered.score_ids == direct.score_ids and recovered.perf_ids == direct.perf_ids


def _refusal(tokenizer, made: dict[str, Path]) -> TokenizationError:
    with pytest.raises(TokenizationError) as info:
        tokenize_pair(made["score"], made["performance"], tokenizer, annotations=made["annotations"],
                      unverified_alignment=made["alignment"])
    return info.value


def test_performance_that_skips_bars_stays_refused(tokenizer, tmp_path):
    """16 bars, bars 7-9 not played: 81% of the notes matched, but 3 score bars without one."""
    error = _refusal(tokenizer, piece(tmp_path, 16, [*range(1, 7), *range(10, 17)]))
    assert error.reason == "bar mismatch"  # the annotations' refusal stands, with why the alignment cannot help
    assert "3 consecutive score bars without a matched note" in str(error)


def test_performance_with_music_the_score_lacks_stays_refused(tokenizer, tmp_path):
    """12 bars, bars 1-8 played twice though the score has no repeat: every score note is matched (the first
    time), but 16 s of music fall between two matched notes a quarter apart."""
    played = [*range(1, 9), *range(1, 9), *range(9, 13)]
    error = _refusal(tokenizer, piece(tmp_path, 12, played, aligned=[n < 8 or n >= 16 for n in range(20)]))
    assert "without a matched note beyond the score's time" in str(error)


def test_too_few_matched_notes_stay_refused(tokenizer, tmp_path):
    """Half of the notes aligned: below the 80% that parangonar's alignments need too."""
    error = _refusal(tokenizer, piece(tmp_path, 8, [*range(1, 9), 8], aligned=[k % 2 == 0 for k in range(9)]))
    assert "of the score's notes matched" in str(error)


def test_alignment_the_annotations_contradict_stays_refused(tokenizer, tmp_path):
    """40 bars played as written; the annotations miss one downbeat (39 bars: refused on them), and the
    alignment puts every note half a bar late: no downbeat falls on a bar line."""
    made = piece(tmp_path, 40, list(range(1, 41)))
    labels = made["annotations"].read_text().splitlines()
    labels[4 * 5] = labels[4 * 5].replace("db", "b")
    made["annotations"].write_text("\n".join(labels) + "\n")
    rows = [line.split("\t") for line in made["alignment"].read_text().splitlines()]
    made["alignment"].write_text("\n".join("\t".join(r[:5] + [r[5] if k == 0 else f"{float(r[5]) + 1.0:.3f}"])
                                          for k, r in enumerate(rows)) + "\n")
    error = _refusal(tokenizer, made)
    assert "annotated downbeats on a bar line" in str(error)

"""Scores from the wild (issue 19): kern, MEI and MusicXML files partitura 1.9.0 stumbles on are read."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from instruct_museformer.tokens.errors import TokenizationError
from instruct_museformer.tokens.score import load_score
from instruct_museformer.tokens.score_reader import ScoreReadingWarning

WILD = Path(__file__).resolve().parents[1] / "fixtures" / "scores_from_the_wild"

# note and measure counts read off the files (ties merged; the final empty "==" measure dropped)
PARTITURA_KERN = {"chor228.krn": (102, 7), "spline_splitting.krn": (70, 5), "voice_duplication.krn": (50, 3),
                  "variable_length_pr_bug.krn": (139, 9)}


@pytest.mark.parametrize("name", sorted(PARTITURA_KERN))
def test_partitura_kern_files_are_read(name):
    """partitura leaves KernElement objects (``*met(c)``, ``*^``/``*v``) that merge_parts cannot handle."""
    data = load_score(WILD / "partitura" / name)
    assert (len(data.pitch), len(data.measures)) == PARTITURA_KERN[name]
    assert all(note_id.endswith("-1") for note_id in data.ids)  # unfolded, one pass


def test_kern_expansion_list_plays_the_sections_in_order():
    data = load_score(WILD / "minimal" / "kern_expansion.krn")  # *>[A,A,B]: A = bars 1-2, B = bar 3
    section_a = [48, 64, 67, 55, 72, 48, 52, 72]
    section_b = [53, 69, 55, 71, 48, 72]
    assert data.pitch.tolist() == section_a + section_a + section_b
    assert [m.start for m in data.measures] == [0.0, 3.0, 6.0, 9.0, 12.0]
    assert [i.rsplit("-", 1)[1] for i in data.ids] == ["1"] * 8 + ["2"] * 8 + ["1"] * 6
    assert data.onset[8] == 6.0  # the second pass of A starts after the first


def test_repeats_partitura_cannot_unfold_are_played_as_written():
    path = WILD / "partitura" / "test_unfold_complex.mei"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load_score(path)
    reading = [w for w in caught if issubclass(w.category, ScoreReadingWarning)]
    assert len(reading) == 1 and "played as written" in str(reading[0].message) and str(path) in str(reading[0].message)
    assert data.pitch.tolist() == [60, 62, 64, 65, 67, 69, 71, 72]  # c d e f g a b c, each once
    assert len(data.measures) == 8


def test_mei_breve_with_ppq_merges():
    """partitura gives a staff opening with a breve a float ppq; merge_parts' np.lcm then fails."""
    data = load_score(WILD / "minimal" / "breve_ppq.mei")
    assert sorted(data.pitch.tolist()) == [55, 55, 60, 67, 71, 72]
    assert [(m.start, m.end) for m in data.measures] == [(0.0, 8.0), (8.0, 16.0)]
    assert data.onset[data.pitch.tolist().index(72)] == 12.0


def test_mei_empty_first_staff_keeps_the_other_staves_bar():
    """merge_parts keeps the first part's measures, and partitura ends a measure where its staff's content ends:
    an empty first staff (CRIM_Mass_0030_4.mei's last measure) gave a zero-length bar, its long note none."""
    data = load_score(WILD / "minimal" / "empty_first_staff.mei")
    assert data.pitch.tolist() == [48, 67, 72, 55]
    assert [(m.start, m.end) for m in data.measures] == [(0.0, 8.0), (8.0, 24.0)]
    assert (data.onset[-1], data.duration[-1]) == (8.0, 16.0)


def test_musicxml_unreadable_fingerings_are_skipped():
    data = load_score(WILD / "minimal" / "technical_fingering.musicxml")
    assert data.pitch.tolist() == [72, 74, 76, 77, 79, 81]
    assert data.onset.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 6.0]


def test_mensural_mei_is_refused_in_one_line():
    path = WILD / "minimal" / "mensural.mei"
    with pytest.raises(TokenizationError) as error:
        load_score(path)
    message = str(error.value)
    assert error.value.reason == "parse error" and "\n" not in message
    assert str(path) in message and "mensural notation" in message


def test_parts_whose_repeats_disagree_unfold_by_the_first_part():
    """merge_parts keeps every part's repeats; partitura alone unfolds this 4-bar file into 12 bars."""
    data = load_score(WILD / "minimal" / "two_parts_repeat.musicxml")  # first part: |: 1 2 :|: 3 4 :|
    assert data.pitch.tolist() == [60, 72, 62, 74] * 2 + [64, 76, 65, 77] * 2
    assert len(data.measures) == 8

"""The unfolding a note alignment refers to: its note ids name the path through the score's repeats."""

from __future__ import annotations

from synthetic_pieces import piece

from instruct_museformer.tokens.score import load_score
from instruct_museformer.tokens.unfolding import unfolding_for


def test_alignment_ids_choose_the_unfolding(tmp_path):
    """The maximal unfolding is kept when the alignment's ids are its own; otherwise the path they name."""
    played = piece(tmp_path, 4, [1, 2, 3, 4], repeat=(1, 2))
    score = played["score"]
    maximal = load_score(score)
    assert len(maximal.measures) == 6
    labels = unfolding_for(score, maximal.ids, played["alignment"])
    assert labels == "A-B"
    assert len(load_score(score, unfolding=labels).measures) == 4

    (tmp_path / "repeated").mkdir()
    repeated = piece(tmp_path / "repeated", 4, [1, 2, 1, 2, 3, 4], repeat=(1, 2))
    assert unfolding_for(repeated["score"], load_score(repeated["score"]).ids, repeated["alignment"]) is None

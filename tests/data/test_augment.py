"""Token augmentation: transposition, tempo and velocity shifts applied to both sides of a pair."""

from __future__ import annotations

import torch

from instruct_museformer.data.augment import TokenAugmentation
from instruct_museformer.data.dataset import Sample
from instruct_museformer.tokens.tokenizer import build_tokenizer, vocab_tokens

TOKENS = vocab_tokens(build_tokenizer())
IDS = {t: i for i, t in enumerate(TOKENS)}
TEMPOS = [t for t in TOKENS if t.startswith("Tempo_")]
VELOCITIES = [t for t in TOKENS if t.startswith("Velocity_")]


def _sample(pitches: list[int], velocity: str, tempo: str) -> Sample:
    side = [IDS["TimeSig_4/4"], IDS["Position_0"], IDS[tempo]]
    for p in pitches:
        side += [IDS[f"Pitch_{p}"], IDS[velocity], IDS["Duration_1.0.16"]]
    side += [4, 2]
    return Sample(0, torch.tensor(side), torch.tensor(side))


def _names(ids: torch.Tensor) -> list[str]:
    return [TOKENS[i] for i in ids.tolist()]


def test_shifts_move_both_sides_together_and_stay_in_range():
    aug = TokenAugmentation.build(TOKENS, len(TOKENS), transpose=6, tempo=3, velocity=2, seed=1)
    sample = _sample([60, 64, 67], VELOCITIES[10], TEMPOS[60])
    moved = set()
    for batch_index in range(40):
        (out,) = aug.for_epoch(1)([sample], batch_index)
        assert torch.equal(out.source, out.target)  # one shift for both sides
        names = _names(out.target)
        pitches = [int(n.split("_")[1]) for n in names if n.startswith("Pitch_")]
        shift = pitches[0] - 60
        assert pitches == [60 + shift, 64 + shift, 67 + shift] and -6 <= shift <= 6
        assert abs(VELOCITIES.index(names[4]) - 10) <= 2 and abs(TEMPOS.index(names[2]) - 60) <= 3
        assert names[0] == "TimeSig_4/4" and names[1] == "Position_0" and names[-2:] == ["Bar_None", "EOS_None"]
        moved.add((shift, names[2], names[4]))
    assert len(moved) > 10  # the shifts vary


def test_transposition_never_leaves_the_piano_and_clamps_ordinal_ends():
    aug = TokenAugmentation.build(TOKENS, len(TOKENS), transpose=12, tempo=3, velocity=3, seed=2)
    sample = _sample([21, 108], VELOCITIES[-1], TEMPOS[0])  # the whole range: no transposition possible
    for batch_index in range(20):
        (out,) = aug([sample], batch_index)
        names = _names(out.target)
        assert [n for n in names if n.startswith("Pitch_")] == ["Pitch_21", "Pitch_108"]
        assert VELOCITIES.index(names[4]) >= len(VELOCITIES) - 4 and TEMPOS.index(names[2]) <= 3


def test_the_same_epoch_and_batch_give_the_same_shift():
    aug = TokenAugmentation.build(TOKENS, len(TOKENS), transpose=5, seed=3)
    sample = _sample([60], VELOCITIES[5], TEMPOS[50])
    first = aug.for_epoch(2)([sample], 7)[0].target
    assert torch.equal(first, aug.for_epoch(2)([sample], 7)[0].target)
    assert TokenAugmentation.build(TOKENS, len(TOKENS)) is None

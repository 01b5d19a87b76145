"""--self-feed: the model's own expected Tempo/Velocity bins as the decoder input, the render's pick."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_resume import _argv, _run

from instruct_museformer.data.batch import BarTokens, Batch
from instruct_museformer.errors import UserError
from instruct_museformer.render.decode import SamplingOptions, filtered_logits, ordinal_pick
from instruct_museformer.render.grammar import ORDINAL_TYPES, TokenGrammar
from instruct_museformer.train.self_feed import SelfFeed

TOKENS = ["PAD_None", "BOS_None", "EOS_None", "MASK_None", "Bar_None", "Velocity_40", "Velocity_20", "Velocity_60",
          "Velocity_80", "Pitch_60", "Pitch_62", "Tempo_60.0", "Tempo_120.0", "Tempo_90.0", "Position_0"]
V = len(TOKENS)


def _bar_tokens(tokens: torch.Tensor) -> BarTokens:
    zeros = torch.zeros_like(tokens)
    return BarTokens(tokens, zeros, zeros, tokens == 0, torch.zeros(tokens.shape[0], dtype=torch.long))


def test_expected_bins_are_the_bins_imf_render_picks_with_ordinal_mean():
    # more bins than the render's top 8, in shuffled id order: the pick is the kept bin nearest the mean
    wide = TOKENS[:5] + [f"Velocity_{v}" for v in (44, 4, 24, 64, 84, 104, 124, 14, 34, 54, 74, 94)] + \
        [f"Tempo_{t}.0" for t in (100, 40, 60, 80, 120, 140, 160, 180, 200, 220)] + ["Pitch_60"]
    feed = SelfFeed.build(wide, len(wide), probability=1.0)
    assert feed is not None
    logits = torch.randn(12, len(wide), generator=torch.Generator().manual_seed(0)) * 3
    kinds = torch.tensor([2, 2, 1, 1, 2, 1] * 2)  # Velocity, Velocity, Tempo, ...
    picked = feed.expected_bins(logits[None], kinds[None])[0]
    # the reference: the render's filtered logits (top-k 8 of the allowed ids, here that kind's) and its mean pick
    grammar = TokenGrammar(wide, len(wide), positions_per_beat=4)
    x = filtered_logits(logits, feed.members[kinds], SamplingOptions(topk=8))
    sampled = torch.where(kinds == 2, 5, 17)  # an id of the right type: ordinal_pick replaces it
    types_mask = torch.zeros(int(grammar.types.max()) + 1, dtype=torch.bool)
    types_mask[[ORDINAL_TYPES["tempo"], ORDINAL_TYPES["velocity"]]] = True
    assert picked.tolist() == ordinal_pick(x, sampled, grammar, types_mask, "mean").tolist()
    # by hand: all the weight on Velocity_20 and Velocity_80 -> their mean, 50, is nearest 40 or 60
    feed = SelfFeed.build(TOKENS, V, probability=1.0)
    assert feed is not None
    sharp = torch.full((1, 1, V), -30.0)
    sharp[0, 0, [6, 8]] = 10.0
    assert feed.expected_bins(sharp, torch.tensor([[2]])).item() in (5, 7)
    sharp[0, 0, 8] = 11.0  # more on 80 -> mean above 60
    assert TOKENS[feed.expected_bins(sharp, torch.tensor([[2]])).item()] == "Velocity_60"


def test_feed_replaces_the_inputs_that_follow_a_tempo_or_velocity_target_only():
    feed = SelfFeed.build(TOKENS, V, probability=1.0)
    assert feed is not None
    target = torch.tensor([[14, 9, 6, 11, 4, 2, 0], [9, 8, 4, 10, 7, 4, 2]])
    prev = torch.cat([torch.full((2, 1), 2), target[:, :-1]], dim=1)
    prev[1, 5] = 9  # as a chunk's input that is not the shifted target: left alone
    batch = Batch(_bar_tokens(prev), target, None, int((target != 0).sum()), torch.arange(2))
    logits = torch.full((2, 7, V), -20.0)
    logits[..., 8] = 5.0  # the model expects Velocity_80 ...
    logits[..., 12] = 5.0  # ... and Tempo_120 everywhere
    fed = feed.feed(batch, logits).prev_output.tokens
    expected = prev.clone()
    expected[0, 3], expected[0, 4] = 8, 12  # after target Velocity_20 and Tempo_60
    expected[1, 2] = 8  # after Velocity_80 (already 8); target Velocity_60 at 4 -> input 5 is not its copy
    assert fed.tolist() == expected.tolist()
    assert torch.equal(feed.feed(batch, logits).target, target)


def test_probability_zero_builds_nothing_and_bad_values_are_refused():
    assert SelfFeed.build(TOKENS, V, probability=0.0) is None
    with pytest.raises(UserError, match="--self-feed 1.5"):
        SelfFeed.build(TOKENS, V, probability=1.5)
    assert int(SelfFeed.build(TOKENS[:11], 11, probability=0.5).kind.max()) == 2  # no Tempo: Velocity alone
    with pytest.raises(UserError, match="no Tempo or Velocity tokens"):
        SelfFeed.build(TOKENS[:5] + TOKENS[9:11], 7, probability=0.5)


def test_trainer_reads_the_fed_history(data_bin: Path, tmp_path: Path) -> None:
    """The first pass's picks reach the second pass; training with it resumes exactly like the other levers."""
    full = _run(_argv(data_bin, tmp_path / "full", "--self-feed", "0.5", "--max-update", "4"))
    argv = _argv(data_bin, tmp_path / "killed", "--self-feed", "0.5", "--max-update", "4")
    first = _run(argv, kill_at=3)
    assert first[:2] + _run(argv) == full
    plain = _run(_argv(data_bin, tmp_path / "plain", "--max-update", "4"))
    assert plain[0] != full[0]  # the history the first step reads is different

"""The masks against the rules of museformer.md 4.3 written out token by token, and tile soundness."""

import pytest
import torch
from model_helpers import random_layout_batch

from instruct_museformer.model.masks import (
    bar_layout,
    cross_layout,
    pad_bar_tokens,
    regular_layout,
    summary_layout,
)
from instruct_museformer.model.scheme import parse_scheme

C2C_TEXT = "((((-2, 0), -4, -8),),)"
C2S_TEXT = "((((None, -8), (-7, -4), -3),),)"
C2C = {0, -1, -2, -4, -8}
C2S = {o for o in range(-50, 0)} - C2C


def _sets():
    c2c = parse_scheme("con2con", C2C_TEXT, 1, "full")[0]
    c2s = parse_scheme("con2sum", C2S_TEXT, 1, "none")[0]
    sr = parse_scheme("sum2con", "((None,),)", 1, "full")[0]
    ss = parse_scheme("sum2sum", "((None,),)", 1, "full")[0]
    return c2c, c2s, sr, ss


def _tokens(seed: int):
    return random_layout_batch(seed, translation=True)


def test_decoder_masks_follow_the_token_rules():
    batch = _tokens(1)
    c2c, c2s, sr, ss = _sets()
    side = bar_layout(batch.prev_output, num_summary=1)
    rx = regular_layout(side, c2c, c2s, causal=True).dense()[:, 0]
    sx = summary_layout(side, sr, ss).dense()[:, 0]
    S = side.sum_bar.shape[1]
    for b in range(batch.prev_output.tokens.shape[0]):
        bar = side.bar[b].tolist()
        valid = side.valid[b].tolist()
        complete = int(batch.prev_output.num_complete_bars[b])
        R = len(bar)
        for q in range(R):
            for s in range(S):
                want = valid[q] and bar[q] >= 1 and s + 1 <= complete and (s + 1 - bar[q]) in C2S
                assert bool(rx[b, q, s]) == want, (b, q, s)
            for k in range(R):
                both = valid[q] and valid[k] and k <= q
                content = bar[q] > 0 and bar[k] > 0 and (bar[k] - bar[q]) in C2C
                pref = (bar[q] > 0 and bar[k] == 0) or (bar[q] == 0 and bar[k] == 0)
                assert bool(rx[b, q, S + k]) == (both and (content or pref)), (b, q, k)
        for s in range(S):
            ok = s + 1 <= complete
            for s2 in range(S):
                assert bool(sx[b, s, s2]) == (ok and s2 == s)
            for k in range(R):
                assert bool(sx[b, s, S + k]) == (ok and valid[k] and bar[k] == s + 1)
        # the BOS (position 0) reads only itself: the original's first-bar leak is gone
        assert rx[b, 0].nonzero().flatten().tolist() == [S]


def test_cross_mask_reads_near_bars_fine_and_far_bars_coarse():
    batch = _tokens(2)
    near = parse_scheme("cross_con2con", "((((-1, 2),),),)", 1)[0]
    far = parse_scheme("cross_con2sum", "((((None, -1), (2, None)),),)", 1)[0]
    tgt, src = bar_layout(batch.prev_output, 1), bar_layout(batch.source, 1)
    mask = cross_layout(tgt, src, near, far).dense()[:, 0]
    S = src.sum_bar.shape[1]
    for b in range(mask.shape[0]):
        complete = int(batch.source.num_complete_bars[b])
        for q, (qb, qv) in enumerate(zip(tgt.bar[b].tolist(), tgt.valid[b].tolist(), strict=True)):
            for s in range(S):
                want = qv and qb >= 1 and s + 1 <= complete and abs(s + 1 - qb) >= 2
                assert bool(mask[b, q, s]) == want
            for k, (kb, kv) in enumerate(zip(src.bar[b].tolist(), src.valid[b].tolist(), strict=True)):
                want = qv and kv and ((qb >= 1 and kb >= 1 and abs(kb - qb) <= 1) or kb == 0)
                assert bool(mask[b, q, S + k]) == want
            assert bool(mask[b, q].any()) == qv  # no empty row but padding


@pytest.mark.parametrize("block_size", [4, 8, 16])
def test_tile_kinds_are_sound(block_size: int):
    """Empty tiles hold no allowed pair, full tiles only allowed pairs: what FlexAttention relies on."""
    batch = _tokens(3)
    c2c, c2s, sr, ss = _sets()
    tgt_tokens = pad_bar_tokens(batch.prev_output, block_size)
    src_tokens = pad_bar_tokens(batch.source, block_size)
    tgt, src = bar_layout(tgt_tokens, 1, block_size), bar_layout(src_tokens, 1, block_size)
    near = parse_scheme("cross_con2con", "((((-1, 2),),),)", 1)[0]
    far = parse_scheme("cross_con2sum", "((((None, -1), (2, None)),),)", 1)[0]
    layouts = [
        regular_layout(tgt, c2c, c2s, causal=True),
        regular_layout(src, c2c, c2s, causal=False),
        summary_layout(tgt, sr, ss),
        cross_layout(tgt, src, near, far),
    ]
    seen_full = seen_partial = wasted = 0
    for layout in layouts:
        dense = layout.dense()[:, 0]
        B, Q, K = dense.shape
        tiles = dense.view(B, Q // block_size, block_size, K // block_size, block_size)
        any_true, all_true = tiles.any(dim=(2, 4)), tiles.all(dim=(2, 4))
        partial, full = layout.tile_kinds(block_size)
        assert not (partial & full).any()
        assert torch.equal(full, full & all_true)  # full tiles are fully allowed
        assert not (any_true & ~(partial | full)).any()  # nothing allowed in a skipped tile
        seen_full += int(full.sum())
        seen_partial += int(partial.sum())
        wasted += int((partial & ~any_true).sum())
        # the ordered BlockMask agrees with the tile flags
        block = layout.block_mask(block_size)
        counts = block.kv_num_blocks[:, 0]  # type: ignore[attr-defined]
        assert torch.equal(counts, partial.sum(-1).int())
        for b in range(B):
            for qi in range(Q // block_size):
                idx = block.kv_indices[b, 0, qi, : counts[b, qi]].tolist()  # type: ignore[attr-defined]
                assert sorted(idx) == partial[b, qi].nonzero().flatten().tolist()
    assert seen_partial > 0 and (seen_full > 0 or block_size > 8)  # bars here are short
    assert wasted <= seen_partial // 4  # the classification is tight, not just sound

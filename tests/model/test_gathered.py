"""The gather path: its plan reads exactly the layout's mask, and its chunked forward/backward are exact."""

import numpy as np
import pytest
import torch
from model_helpers import random_layout_batch

from instruct_museformer.model.attention import attend
from instruct_museformer.model.gathered import GatherPlan, build_plan, gathered_attention
from instruct_museformer.model.masks import (
    AttentionLayout,
    bar_layout,
    cross_layout,
    pad_bar_tokens,
    regular_layout,
    summary_layout,
)
from instruct_museformer.model.scheme import parse_scheme

ORIGINAL_C2C = "((((-2, 0), -4, -8, -12, -16, -24, -32),),)"
ORIGINAL_C2S = "((((None, -32), (-31, -24), (-23, -16), (-15, -12), (-11, -8), (-7, -4), -3,),),)"


SELF_MODES = {"con2con": "full", "con2sum": "none", "sum2con": "full", "sum2sum": "full"}  # the model's defaults


def _scheme(part: str, text: str, self_mode: str | None = None):  # type: ignore[no-untyped-def]
    return parse_scheme(part, text, 1, self_mode or SELF_MODES.get(part, "default"))[0]


def _layouts(seed: int, pad: int = 1) -> dict[str, AttentionLayout]:
    batch = random_layout_batch(seed, translation=True)
    tgt = bar_layout(pad_bar_tokens(batch.prev_output, pad), 1, pad)
    src = bar_layout(pad_bar_tokens(batch.source, pad), 1, pad)
    own = _scheme("sum2con", "((None,),)")
    near_c2c, near_c2s = _scheme("con2con", "((((-1, 0),),),)"), _scheme("con2sum", "((((None, -1),),),)")
    orig_c2c, orig_c2s = _scheme("con2con", ORIGINAL_C2C), _scheme("con2sum", ORIGINAL_C2S)
    return {
        "decoder original": regular_layout(tgt, orig_c2c, orig_c2s, True),
        "decoder near": regular_layout(tgt, near_c2c, near_c2s, True),
        "decoder pref none": regular_layout(tgt, near_c2c, near_c2s, True, "none"),
        "encoder": regular_layout(
            src, _scheme("con2con", "((((-1, 2),),),)"), _scheme("con2sum", "((((None, -1), (2, None)),),)"), False
        ),
        "summaries": summary_layout(tgt, own, own),
        "summaries wide": summary_layout(tgt, _scheme("sum2con", "((((-1, 1),),),)"), own),
        "cross": cross_layout(
            tgt, src, _scheme("cross_con2con", "((((-1, 1),),),)"), _scheme("cross_con2sum", "((((None, -2),),),)")
        ),
    }


def _plan_mask(plan: GatherPlan) -> torch.Tensor:
    """The (B*Q, B*K) boolean mask the plan computes: per run its gathered keys, causal bottom-right."""
    mask = torch.zeros(plan.num_queries, plan.num_keys, dtype=torch.bool)
    for ch in plan.chunks:
        q_rows, k_rows = plan.q_rows[ch.q_start : ch.q_end], plan.k_rows[ch.k_start : ch.k_end]
        for g in range(len(ch.cu_q) - 1):
            qs, ks = q_rows[ch.cu_q[g] : ch.cu_q[g + 1]], k_rows[ch.cu_k[g] : ch.cu_k[g + 1]]
            for j, row in enumerate(qs.tolist()):
                upto = len(ks) - len(qs) + j + 1 if plan.causal else len(ks)
                assert not mask[row, ks[:upto]].any(), "a key gathered twice for one query"
                mask[row, ks[:upto]] = True
    return mask


def _dense_rows(layout: AttentionLayout) -> torch.Tensor:
    """layout.dense() as one block-diagonal (B*Q, B*K) matrix."""
    dense = layout.dense()[:, 0]  # (B, Q, K)
    return torch.block_diag(*dense)


@pytest.mark.parametrize("seed", [0, 3])
@pytest.mark.parametrize("chunk_keys", [1 << 16, 40])
@pytest.mark.parametrize(
    "name", ["decoder original", "decoder near", "decoder pref none", "encoder", "summaries", "summaries wide", "cross"]
)
def test_plan_reads_exactly_the_layout_mask(name: str, chunk_keys: int, seed: int):
    layout = _layouts(seed)[name]
    plan = build_plan(layout, chunk_keys)
    assert plan is not None
    assert plan.causal == (layout.k_pos is not None)
    if chunk_keys == 40:
        assert len(plan.chunks) > 1
    assert torch.equal(_plan_mask(plan), _dense_rows(layout))
    assert plan.distinct_keys == (plan.k_rows.unique().numel() == plan.k_rows.numel())


def test_causal_layout_whose_bars_skip_themselves_has_no_plan(cpu_flex_backward: None):
    batch = random_layout_batch(1)
    side = bar_layout(pad_bar_tokens(batch.prev_output, 16), 1, 16)
    c2c = _scheme("con2con", "((((-2, 0),),),)", "none")  # (-2, 0) is [-2, 0): bars -2 and -1 only
    skip_own = regular_layout(side, c2c, _scheme("con2sum", "((((None, -3),),),)"), True)
    assert build_plan(skip_own) is None
    q = torch.randn(3, 2, side.bar.shape[1], 8)
    kv = torch.randn(3, 2, side.sum_bar.shape[1] + side.bar.shape[1], 8)
    # falls back to FlexAttention (same meaning)
    torch.testing.assert_close(attend(q, kv, kv, skip_own, "gather", 16), attend(q, kv, kv, skip_own, "reference", 16))


@pytest.mark.parametrize("chunk_keys", [1 << 16, 50])
@pytest.mark.parametrize("name", ["decoder original", "encoder", "cross", "summaries", "summaries wide"])
def test_gathered_attention_matches_reference_outputs_and_gradients(name: str, chunk_keys: int):
    layout = _layouts(2, pad=16)[name]
    plan = build_plan(layout, chunk_keys)
    assert plan is not None
    b, q_len = layout.q_class.shape
    k_len = layout.k_class.shape[1]
    gen = torch.Generator().manual_seed(5)
    tensors = [torch.randn(b, 3, n, 8, generator=gen, dtype=torch.float64) for n in (q_len, k_len, k_len)]
    weights = torch.randn(b, 3, q_len, 8, generator=gen, dtype=torch.float64)
    outs, grads = [], []
    for gather in (False, True):
        q, k, v = (t.clone().requires_grad_() for t in tensors)
        out = gathered_attention(q, k, v, plan) if gather else attend(q, k, v, layout, "reference", 16)
        (out * weights).sum().backward()
        outs.append(out.detach())
        grads.append(torch.cat([t.grad.flatten() for t in (q, k, v)]))
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-10, atol=1e-12)


def test_gathered_attention_refuses_dropout_without_flash():
    layout = _layouts(0)["decoder near"]
    plan = build_plan(layout)
    b, q_len = layout.q_class.shape
    q = torch.randn(b, 2, q_len, 8)
    kv = torch.randn(b, 2, layout.k_class.shape[1], 8)
    with pytest.raises(ValueError, match="dropout"):
        gathered_attention(q, kv, kv, plan, dropout_p=0.1)
    # attend() routes it to the reference path instead, which has dropout
    assert attend(q, kv, kv, layout, "gather", 16, dropout_p=0.1).shape == q.shape


def test_chunks_take_query_slices_only_where_rows_are_consecutive():
    """A chunk reads its queries as a slice when its runs are adjacent rows, else through the index."""
    plans = [build_plan(layout, 40) for layout in _layouts(2, pad=16).values()]
    chunks = [(plan, ch) for plan in plans if plan is not None for ch in plan.chunks]
    assert {ch.q_row >= 0 for _, ch in chunks} == {True, False}
    for plan, ch in chunks:
        rows = plan.q_rows[ch.q_start : ch.q_end]
        consecutive = bool((rows.diff() == 1).all())
        assert (ch.q_row >= 0) == consecutive
        if consecutive:
            assert ch.q_row == int(rows[0])


@pytest.mark.parametrize("name", ["decoder original", "encoder", "cross", "summaries wide"])
def test_host_table_is_the_class_table(name: str):
    """The plan reads the class table's entries computed with numpy on the host: the device table's twin."""
    layout = _layouts(1)[name]
    rows, cols = layout.table.shape
    host = layout.host_table(np.arange(rows), np.arange(cols))
    assert host.dtype == bool and host.any()
    assert (host == layout.table.numpy()).all()
    some_q, some_k = np.array([2, 0, rows - 1, 2]), np.array([cols - 1, 3, 3, 0, 1])
    assert (layout.host_table(some_q, some_k) == layout.table.numpy()[some_q][:, some_k]).all()


@pytest.mark.parametrize("name", ["decoder original", "cross", "summaries"])
def test_padded_plan_computes_the_same_attention(name: str):
    """Runs without queries or keys, unread key-index entries and wider grids change nothing."""
    from instruct_museformer.model import gathered

    layout = _layouts(2, pad=16)[name]
    plan = build_plan(layout)
    padded = plan.padded(max_runs=100)
    runs, keys, grid_q = plan.capacities(max_runs=100)
    assert runs == 128 and len(padded.run_first) == runs and len(padded.k_rows) == keys >= len(plan.k_rows)
    assert keys & (keys - 1) == 0 and keys >= gathered.MIN_KEYS  # a power of two, at least the minimum
    assert (padded.max_q, padded.max_k) == (grid_q, plan.max_k) and padded.padded(max_runs=100) is padded
    assert grid_q == (16 if plan.max_q <= 16 else 128)  # runs of at most 16 queries keep their small tiles
    assert plan.capacities()[0] == gathered.RUN_BUCKET  # without a bound: the plan's own runs, rounded up
    assert padded.read_queries == plan.read_queries and padded.distinct_keys == plan.distinct_keys
    assert padded.runs.shape == (runs, 4) and padded.runs[len(plan.run_first) :, [1, 3]].abs().sum() == 0  # no work
    b, q_len = layout.q_class.shape
    k_len = layout.k_class.shape[1]
    gen = torch.Generator().manual_seed(5)
    tensors = [torch.randn(b, 2, n, 8, generator=gen, dtype=torch.float64) for n in (q_len, k_len, k_len)]
    results = []
    for p in (plan, padded):
        q, k, v = (t.clone().requires_grad_() for t in tensors)
        out = gathered_attention(q, k, v, p)
        out.square().sum().backward()
        results.append(torch.cat([out.detach().flatten(), *(t.grad.flatten() for t in (q, k, v))]))
    torch.testing.assert_close(results[1], results[0], rtol=0, atol=0)


def test_padding_a_plan_whose_key_index_is_already_a_power_of_two_keeps_integer_ranges():
    """Only the runs grow (no extra key entries): the ranges stay int64 and expand on the device (a training
    batch crashed in a loader worker when numpy turned them into float64)."""
    plan = build_plan(_layouts(2, pad=16)["decoder original"]).padded(max_runs=100)
    more_runs = plan.padded(max_runs=300)
    assert int(more_runs.range_count.sum()) == int(plan.range_count.sum()) and len(more_runs.run_first) > 300
    assert more_runs.range_first.dtype == more_runs.range_count.dtype == np.int64
    assert torch.equal(more_runs.k_rows, plan.k_rows)

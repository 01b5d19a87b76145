"""Reference (dense masks), gather and FlexAttention paths: same outputs and gradients on random bar layouts."""

import warnings

import pytest
import torch
from model_helpers import random_layout_batch, small_config

from instruct_museformer.model import build_model
from instruct_museformer.model.attention import attend
from instruct_museformer.model.masks import bar_layout, pad_bar_tokens, regular_layout
from instruct_museformer.model.scheme import parse_scheme

SCHEMES = {
    "near-far": {},
    "original": {
        "con2con": "((((-2, 0), -4, -8, -12, -16, -24, -32),),)",
        "con2sum": "((((None, -32), (-31, -24), (-23, -16), (-15, -12), (-11, -8), (-7, -4), -3,),),)",
    },
    "per-layer": {
        "con2con": "((((-1, 0),),), (((-3, 0), -5),))",
        "con2sum": "((((None, -1),),), (((None, -5), -4),))",
        "cross_con2con": "(((0,),), (((-1, 2),),))",
        "cross_con2sum": "((((None, 0), (1, None)),), (((None, -1), (2, None)),))",
    },
}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def _pair(task: str, seed: int, impl: str = "flex", **overrides: object) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(seed)
    ref = build_model(small_config(task, attention_impl="reference", **overrides))
    flex = build_model(small_config(task, attention_impl=impl, **overrides))
    flex.load_state_dict(ref.state_dict())
    return ref, flex


@pytest.mark.parametrize("impl", ["flex", "gather"])
@pytest.mark.parametrize("task", ["language_modeling", "translation"])
@pytest.mark.parametrize(("scheme", "seed"), [("near-far", 0), ("original", 1), ("per-layer", 2)])
def test_fast_paths_match_reference(task: str, scheme: str, seed: int, impl: str, cpu_flex_backward: None):
    ref, flex = _pair(task, seed, impl, **SCHEMES[scheme])
    batch = random_layout_batch(seed, translation=task == "translation")
    weights = torch.randn(*batch.target.shape, ref.cfg.vocab_size, generator=torch.Generator().manual_seed(seed))
    outs, grads = [], []
    for model in (ref, flex):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logits = model(batch)
        (logits * weights).sum().backward()
        outs.append(logits.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert outs[0].dtype == torch.float32 and torch.isfinite(outs[0]).all()
    assert _rel(outs[1], outs[0]) < 1e-4
    flat = [torch.cat([g.flatten() for g in gr.values()]) for gr in grads]
    assert _rel(flat[1], flat[0]) < 1e-4
    scale = flat[0].norm()
    for name, g in grads[0].items():
        # per parameter, relative to its own size (or to the whole when it is ~0: e.g. key biases)
        assert float((grads[1][name] - g).norm()) < 1e-4 * max(float(g.norm()), 1e-3 * float(scale)), name


@pytest.mark.parametrize("impl", ["reference", "flex", "gather"])
def test_fully_masked_rows_give_zero_not_nan(impl: str, cpu_flex_backward: None):
    batch = random_layout_batch(4)
    tokens = pad_bar_tokens(batch.prev_output, 16)
    side = bar_layout(tokens, 1, 16)
    c2c = parse_scheme("con2con", "((((-1, 0),),),)", 1)[0]
    c2s = parse_scheme("con2sum", "((((None, -1),),),)", 1)[0]
    layout = regular_layout(side, c2c, c2s, causal=True)
    B, R = side.bar.shape
    K = side.sum_bar.shape[1] + R
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(B, 2, R, 8, generator=gen, requires_grad=True)
    k = torch.randn(B, 2, K, 8, generator=gen, requires_grad=True)
    v = torch.randn(B, 2, K, 8, generator=gen, requires_grad=True)
    out = attend(q, k, v, layout, impl, 16)
    out.square().sum().backward()
    padded = ~side.valid  # (B, R): these rows have no allowed key
    assert padded.any()
    assert out.isfinite().all() and out.transpose(1, 2)[padded].eq(0).all()
    assert all(t.grad is not None and t.grad.isfinite().all() for t in (q, k, v))
    assert q.grad.transpose(1, 2)[padded].eq(0).all()


def test_segment_summaries_match_the_summary_attention():
    """The fast path's segment softmax for "each summary reads its own bar" equals masked attention."""
    from instruct_museformer.model.attention import segment_summaries
    from instruct_museformer.model.masks import summary_layout

    batch = random_layout_batch(12)
    side = bar_layout(batch.prev_output, 1)
    own = parse_scheme("sum2con", "((None,),)", 1, "full")[0]
    layout = summary_layout(side, own, own)
    assert layout.segments is not None
    assert not side.sum_valid.all()  # unused slots (shorter sequences) are covered
    B, S = side.sum_bar.shape
    K = S + side.bar.shape[1]
    gen = torch.Generator().manual_seed(1)
    tensors = [torch.randn(B, 2, n, 8, generator=gen, dtype=torch.float64) for n in (S, K, K)]
    outs, grads = [], []
    for fast in (False, True):
        q, k, v = (t.clone().requires_grad_() for t in tensors)
        out = segment_summaries(q, k, v, *layout.segments) if fast else attend(q, k, v, layout, "reference", 16)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view(out.shape)).sum().backward()
        outs.append(out.detach())
        grads.append(torch.cat([t.grad.flatten() for t in (q, k, v)]))
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-10, atol=1e-12)


def test_other_summary_schemes_use_the_attention_kernel():
    from instruct_museformer.model.masks import summary_layout

    side = bar_layout(random_layout_batch(13).prev_output, 1)
    wide = parse_scheme("sum2con", "((((-1, 1),),),)", 1, "full")[0]
    own = parse_scheme("sum2sum", "((None,),)", 1, "full")[0]
    assert summary_layout(side, wide, own).segments is None
    assert bar_layout(random_layout_batch(13).prev_output, 2).num_summary == 2

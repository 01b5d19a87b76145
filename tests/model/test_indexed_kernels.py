"""The indexed Triton kernels of the gather path against the reference path, run in Triton's interpreter.

The kernels run on CUDA in the package; here they run on the CPU through ``TRITON_INTERPRET=1``, which has
to be set before Triton compiles anything, so the checks run in a child process (this file as a script).
They compare in float32 (the interpreter computes ``tl.dot`` exactly), on the test layouts of
``test_gathered`` and through whole models, whose summary step exercises the kept key rows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent


def _interpreter_ready() -> str | None:
    """Why the check cannot run here, or None. Triton's interpreter before 3.9 breaks on NumPy 2 scalars."""
    try:
        import triton
    except ImportError:
        return "Triton is not installed (pip install -e '.[interpret]' brings it)"
    major, minor = (int(x) for x in triton.__version__.split(".")[:2])
    return None if (major, minor) >= (3, 9) else f"Triton {triton.__version__}'s interpreter is too old (needs 3.9)"


def _run(check: str) -> dict[str, dict[str, float]]:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, str(Path(__file__)), check], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(_interpreter_ready() is not None, reason=str(_interpreter_ready()))
@pytest.mark.parametrize("check", ["layouts", "models", "dropout layouts", "dropout models", "graph replay"])
def test_indexed_kernels_match_reference(check: str):
    result = _run(check)
    errors, calls = result["errors"], result["calls"]
    assert errors, "no comparison ran"
    assert max(errors.values()) < 2e-5, errors
    # the kernels themselves ran, forward and backward; in the models also on kept (overwritten) key rows
    assert calls["forward"] > 0 and calls["backward"] == calls["forward"], calls
    if check.endswith("models"):
        assert calls["kept"] > 0, calls
    if check == "dropout layouts":
        assert calls["dropout"] == calls["forward"], calls
    if check == "graph replay":  # the replayed batch is another problem than the recorded one (by far more
        assert all(v > 1e-3 for v in result["stats"].values()), result["stats"]  # than the 2e-5 tolerance)
    if check.startswith("dropout"):
        assert calls["dropout"] > 0, calls
        stats = result["stats"]
        kept = {k: v for k, v in stats.items() if k.endswith("kept fraction")}
        assert all(abs(v - 0.7) < 0.05 for v in kept.values()), kept  # p = 0.3 over each layout's pairs
        moved = {k: v for k, v in stats.items() if k.endswith("moved by dropout")}
        assert all(v > 1e-3 for v in moved.values()), moved


def test_indexed_kernels_need_a_power_of_two_head_size():
    from instruct_museformer.model import indexed

    assert indexed.supports_head_dim(64) and indexed.supports_head_dim(16)
    assert not indexed.supports_head_dim(8) and not indexed.supports_head_dim(48)


# ---------------------------------------------------------------------------------------------------
# The child process


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def _layout_inputs(layout, heads: int, dh: int):  # type: ignore[no-untyped-def]
    """A test layout's plan, seeded q, k, v (B, heads, L, dh) and output weights (B, heads, Q, dh)."""
    from instruct_museformer.model.gathered import build_plan

    b, q_len = layout.q_class.shape
    k_len = layout.k_class.shape[1]
    gen = torch.Generator().manual_seed(5)
    tensors = [torch.randn(b, heads, n, dh, generator=gen) for n in (q_len, k_len, k_len)]
    return build_plan(layout), tensors, torch.randn(b, heads, q_len, dh, generator=gen)


def _check_layouts() -> dict[str, float]:
    """Every test layout; keys' gradients summed a head at a time (the smallest accumulator budget)."""
    from test_gathered import _layouts

    from instruct_museformer.model import gathered
    from instruct_museformer.model.attention import attend
    from instruct_museformer.model.gathered import gathered_attention

    gathered.KERNEL = "indexed"
    gathered.TILE_ENTRIES = 2  # key tiles read by more than two runs split over several programs
    errors = {}
    for name, layout in _layouts(2, pad=16).items():
        plan, tensors, weights = _layout_inputs(layout, 2, 16)
        results = []
        for fast in (False, True):
            q, k, v = (t.clone().requires_grad_() for t in tensors)
            out = gathered_attention(q, k, v, plan) if fast else attend(q, k, v, layout, "reference", 16)
            (out * weights).sum().backward()
            results.append([out.detach(), q.grad, k.grad, v.grad])
        for part, got, want in zip(("out", "dq", "dk", "dv"), *results, strict=True):
            errors[f"{name} {part}"] = _rel(got, want)
    return errors


def _check_models() -> dict[str, float]:
    """Both tasks, the original scheme, batch 3 with padding: logits and every parameter's gradient."""
    from model_helpers import random_layout_batch, small_config

    from instruct_museformer.model import build_model, gathered

    gathered.KERNEL = "indexed"
    scheme = {
        "con2con": "((((-2, 0), -4, -8, -12, -16, -24, -32),),)",
        "con2sum": "((((None, -32), (-31, -24), (-23, -16), (-15, -12), (-11, -8), (-7, -4), -3,),),)",
    }
    errors = {}
    for task in ("language_modeling", "translation"):
        torch.manual_seed(0)
        sizes = {"attention_embed_dim": 64, "num_attention_heads": 4}  # head size 16: the kernels' smallest
        ref = build_model(small_config(task, attention_impl="reference", **sizes, **scheme))
        fast = build_model(small_config(task, attention_impl="gather", **sizes, **scheme))
        fast.load_state_dict(ref.state_dict())
        batch = random_layout_batch(1, translation=task == "translation")
        weights = torch.randn(*batch.target.shape, ref.cfg.vocab_size, generator=torch.Generator().manual_seed(1))
        results = []
        for model in (ref, fast):
            logits = model(batch)
            (logits * weights).sum().backward()
            results.append((logits.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])))
        errors[f"{task} logits"] = _rel(results[1][0], results[0][0])
        errors[f"{task} grads"] = _rel(results[1][1], results[0][1])
    return errors


STATS: dict[str, float] = {}  # figures a check reports besides its errors


def _check_dropout_layouts() -> dict[str, float]:
    """Attention dropout on every test layout against a float64 softmax over the plan's pairs with the
    kernels' own mask (both backward kernels draw it again, so a mismatch shows in the gradients)."""
    from test_gathered import _layouts, _plan_mask

    from instruct_museformer.model import gathered, indexed
    from instruct_museformer.model.gathered import gathered_attention

    gathered.KERNEL = "indexed"
    gathered.TILE_ENTRIES = 2  # key tiles read by more than two runs split over several programs
    gathered._dropout_seed = lambda device: torch.tensor([1234], device=device)
    p, heads, dh = 0.3, 2, 16
    errors = {}
    for name, layout in _layouts(2, pad=16).items():
        plan, tensors, weights = _layout_inputs(layout, heads, dh)
        b, q_len = layout.q_class.shape
        k_len = layout.k_class.shape[1]
        allowed = _plan_mask(plan)  # (B*Q, B*K)
        keep = indexed.dropout_mask(1234, p, b * q_len, b * k_len, heads, torch.device("cpu"))  # (H, B*Q, B*K)
        results = []
        for fast in (False, True):
            q, k, v = (t.clone().double().requires_grad_() if not fast else t.clone().requires_grad_() for t in tensors)
            if fast:
                out = gathered_attention(q, k, v, plan, dropout_p=p)
            else:
                rows = [x.transpose(1, 2).reshape(-1, heads, dh).transpose(0, 1) for x in (q, k, v)]  # (H, N, dh)
                scores = (rows[0] @ rows[1].transpose(1, 2)) / dh**0.5
                scores = scores.masked_fill(~allowed, float("-inf"))
                probs = torch.softmax(scores, dim=-1).nan_to_num(0.0) * keep / (1 - p)
                out = (probs @ rows[2]).transpose(0, 1).reshape(b, q_len, heads, dh).transpose(1, 2)
            (out * weights).sum().backward()
            results.append([out.detach().float(), q.grad.float(), k.grad.float(), v.grad.float()])
        for part, got, want in zip(("out", "dq", "dk", "dv"), *results, strict=True):
            errors[f"{name} {part}"] = _rel(got, want)
        STATS[f"{name} kept fraction"] = float(keep[:, allowed].float().mean())
    return errors


def _check_dropout_models() -> dict[str, float]:
    """The translation model (encoder, decoder, cross-attention) with attention dropout through the indexed
    kernels: the fused two-step attention (step 2's keys written over step 1's) against the unfused one,
    with the same masks (same seeds, same order)."""
    from model_helpers import random_layout_batch, small_config

    from instruct_museformer.model import build_model, gathered
    from instruct_museformer.model.attention import CrossAttention, V2S1Attention

    gathered.KERNEL = "indexed"
    errors = {}
    for task in ("translation",):
        torch.manual_seed(0)
        # one layer each side: the fused step, the cross-attention and the summaries all run in it
        sizes = {
            "attention_embed_dim": 64,
            "num_attention_heads": 4,
            "attention_dropout": 0.25,
            "num_layers": 1,
            "encoder_layers": 1,
        }
        model = build_model(small_config(task, attention_impl="gather", **sizes)).train()
        batch = random_layout_batch(1, translation=task == "translation")
        weights = torch.randn(*batch.target.shape, model.cfg.vocab_size, generator=torch.Generator().manual_seed(1))
        results = []
        for fused in (True, False):
            for module in model.modules():
                if isinstance(module, V2S1Attention):
                    module.kv_sink = None if fused else []  # a key/value sink turns the fused step off
            model.zero_grad()
            torch.manual_seed(3)
            logits = model(batch)
            (logits * weights).sum().backward()
            results.append((logits.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])))
        errors[f"{task} logits"] = _rel(results[0][0], results[1][0])
        errors[f"{task} grads"] = _rel(results[0][1], results[1][1])
        # and the dropout did something: the same model without it differs
        for module in model.modules():
            if isinstance(module, (V2S1Attention, CrossAttention)):
                module.dropout, module.kv_sink = 0.0, None
        torch.manual_seed(3)
        logits = model(batch)
        (logits * weights).sum().backward()  # the kernels' calls stay paired (forward == backward)
        STATS[f"{task} logits moved by dropout"] = _rel(logits.detach(), results[0][0])
    return errors


def _check_graph_replay() -> dict[str, float]:
    """``train.graphs.StepGraphs`` on the CPU, where "replaying" runs the step again on the recorded batch
    after the new batch's tensors were copied in: whatever the step reads from the recorded batch instead
    of the new one (a host value missing from the signature, a tensor not among the inputs) shows here as a
    difference from the eager step on the new batch. Both tasks; the new batch has the recorded one's bars
    in another order (same signature, other plans)."""
    import dataclasses

    from model_helpers import bar_sequence, make_batch, small_config

    from instruct_museformer.model import build_model, gathered
    from instruct_museformer.model.planning import LayoutPlanner
    from instruct_museformer.train.graphs import StepGraphs, graph_inputs

    gathered.KERNEL = "indexed"
    # small grids: the interpreter runs every program of the padded grids, even those that return at once
    gathered.RUN_BUCKET, gathered.MIN_EXTENT = 4, 16
    errors = {}
    for task in ("language_modeling", "translation"):
        torch.manual_seed(0)
        cfg = small_config(
            task,
            attention_impl="gather",
            attention_embed_dim=64,
            num_attention_heads=4,
            block_size=16,
            num_layers=1,
            encoder_layers=1,
        )  # what a replay reads does not depend on depth
        model = build_model(cfg)
        batches = []
        for order in ([5, 1, 9, 3, 12, 1, 4, 7], [12, 4, 1, 7, 5, 9, 1, 3]):
            gen = torch.Generator().manual_seed(3)
            targets = [bar_sequence(gen, order, truncated_last=True), bar_sequence(gen, order[:5])]
            sources = [bar_sequence(gen, order[::-1]), bar_sequence(gen, order[2:])] if task == "translation" else None
            batches.append(make_batch(targets, sources))

        def step(batch, model=model):  # type: ignore[no-untyped-def]
            logits = model(batch)
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch.target.flatten(), reduction="sum")
            return loss, loss.detach()

        graphs = StepGraphs(step, torch.device("cpu"), LayoutPlanner(cfg, "cpu", pad_plans=True))
        keys = [graph_inputs(graphs.prepare(b))[0] for b in batches]
        assert keys[0] == keys[1], "the test batches should share a signature"
        results = []
        for batch, through_graphs in ((batches[0], True), (batches[1], True), (batches[1], False)):
            for p in model.parameters():
                p.grad = None if p.grad is None else p.grad.zero_()
            plain = dataclasses.replace(batch, layouts=LayoutPlanner(cfg, "cpu")(batch))  # unpadded plans
            loss = graphs(batch) if through_graphs else graphs._forward_backward(plain)
            results.append((loss, torch.cat([p.grad.flatten() for p in model.parameters()])))
        assert (graphs.eager, graphs.recorded, graphs.replays) == (1, 1, 1), (graphs.eager, graphs.replays)
        errors[f"{task} replayed loss"] = _rel(results[1][0], results[2][0])
        errors[f"{task} replayed grads"] = _rel(results[1][1], results[2][1])
        STATS[f"{task} loss of the recorded batch vs the replayed one"] = _rel(results[0][0], results[2][0])
    return errors


def _counting() -> dict[str, int]:
    """Counts the calls of the kernels' entry points (to tell them from a silent fallback)."""
    from instruct_museformer.model import indexed

    calls = {"forward": 0, "backward": 0, "kept": 0, "dropout": 0}
    forward, backward = indexed.forward, indexed.backward

    def counted_forward(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["forward"] += 1
        calls["dropout"] += (args[8] if len(args) > 8 else kwargs.get("dropout_p", 0.0)) > 0.0
        return forward(*args, **kwargs)

    def counted_backward(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["backward"] += 1
        calls["kept"] += (args[12] if len(args) > 12 else kwargs.get("kept")) is not None
        return backward(*args, **kwargs)

    indexed.forward, indexed.backward = counted_forward, counted_backward
    return calls


if __name__ == "__main__":
    sys.path[:0] = [str(HERE)]
    calls = _counting()
    checks = {
        "layouts": _check_layouts,
        "models": _check_models,
        "dropout layouts": _check_dropout_layouts,
        "dropout models": _check_dropout_models,
        "graph replay": _check_graph_replay,
    }
    errors = checks[sys.argv[1]]()
    print(json.dumps({"errors": errors, "calls": calls, "stats": STATS}))

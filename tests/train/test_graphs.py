"""CUDA-graph bookkeeping of training steps (``train.graphs``), on the CPU.

The graphs themselves need a GPU (the attention benchmark checks a replay against the eager step there);
the interpreter check of ``tests/model/test_indexed_kernels.py`` ("graph replay") replays a step on the CPU
with the indexed kernels. Here: which batches share a signature, what it refuses, and the counters.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "model"))
from model_helpers import bar_sequence, make_batch, small_config  # noqa: E402

from instruct_museformer.model import build_model  # noqa: E402
from instruct_museformer.model.planning import LayoutPlanner  # noqa: E402
from instruct_museformer.train.graphs import StepGraphs, graph_inputs  # noqa: E402

CPU = torch.device("cpu")


def _batch(order: list[int], seed: int = 3, extra: int = 0, translation: bool = False):  # type: ignore[no-untyped-def]
    gen = torch.Generator().manual_seed(seed)
    targets = [bar_sequence(gen, order + [extra] * bool(extra), truncated_last=True), bar_sequence(gen, order[:5])]
    sources = [bar_sequence(gen, order[::-1]), bar_sequence(gen, order[2:])] if translation else None
    return make_batch(targets, sources)


def _prepared(batch, cfg):  # type: ignore[no-untyped-def]
    layouts = LayoutPlanner(cfg, "cpu", pad_plans=True)(batch)
    return dataclasses.replace(batch, layouts=layouts)


@pytest.mark.parametrize("task", ["language_modeling", "translation"])
def test_batches_with_bars_in_another_order_share_a_signature(task: str):
    cfg = small_config(task, attention_impl="gather")
    translation = task == "translation"
    first = _prepared(_batch([5, 1, 9, 3, 12, 1, 4, 7], translation=translation), cfg)
    other = _prepared(_batch([12, 4, 1, 7, 5, 9, 1, 3], translation=translation), cfg)
    key, tensors = graph_inputs(first)
    other_key, other_tensors = graph_inputs(other)
    assert key == other_key and len(tensors) == len(other_tensors)
    assert [t.shape for t in tensors] == [t.shape for t in other_tensors]
    assert any(not torch.equal(a, b) for a, b in zip(tensors, other_tensors, strict=True))  # other plans
    # ntokens and ids are the trainer's, not the forward's
    assert graph_inputs(dataclasses.replace(first, ntokens=1, ids=torch.tensor([7, 8])))[0] == key
    # without padding, the plans' extents (and so the kernels' grids) would differ
    plain = [dataclasses.replace(b, layouts=LayoutPlanner(cfg, "cpu")(b)) for b in (first, other)]
    assert graph_inputs(plain[0])[0] != graph_inputs(plain[1])[0]


def test_a_longer_batch_has_another_signature():
    cfg = small_config(attention_impl="gather", block_size=16)
    short = _prepared(_batch([5, 1, 9, 3, 12, 1, 4, 7]), cfg)
    longer = _prepared(_batch([5, 1, 9, 3, 12, 1, 4, 7], extra=40), cfg)
    assert graph_inputs(short)[0] != graph_inputs(longer)[0]


def test_layouts_without_gather_plans_are_refused():
    """The reference path reads the layouts' own tensors, which a graph does not take as inputs."""
    cfg = small_config(attention_impl="reference")
    batch = dataclasses.replace(_batch([5, 1, 9]), layouts=LayoutPlanner(cfg, "cpu")(_batch([5, 1, 9])))
    with pytest.raises(ValueError, match="gather plan for every attention layout"):
        graph_inputs(batch)


def test_unknown_objects_in_a_batch_are_refused():
    batch = dataclasses.replace(_batch([5, 1, 9]), layouts=object())
    with pytest.raises(TypeError, match="cannot tell what a forward reads"):
        graph_inputs(batch)


def test_step_graphs_record_once_per_signature_and_replay_with_the_new_inputs():
    """A step that reads only the batch's tensors (no layouts): replays give the eager results."""
    weight = torch.nn.Parameter(torch.randn(()))

    def step(batch):  # type: ignore[no-untyped-def]
        loss = (batch.prev_output.tokens.float() * weight).sum() + batch.target.float().mean()
        return loss * 2.0, loss.detach()

    graphs = StepGraphs(step, CPU, planner=None, max_graphs=2)
    batches = [_batch([5, 1, 9], seed=s) for s in (1, 2)] + [_batch([5, 1, 9], seed=1, extra=30)]
    for batch in (*batches, batches[1], batches[0]):
        weight.grad = None
        got = graphs(batch)
        replayed_grad = weight.grad.clone()
        weight.grad = None
        loss, want = step(batch)
        loss.backward()
        assert torch.equal(got, want) and torch.equal(replayed_grad, weight.grad)
    # shapes: the first two share one; the third has its own; two kept at most
    assert (graphs.eager, graphs.recorded, graphs.replays, len(graphs)) == (2, 2, 3, 2)
    assert graphs(batches[1]) is not graphs(batches[1])  # copies: the next replay cannot overwrite them


def test_pad_plans_grows_each_layouts_own_plan():
    """Every layout gets the padding of its own plan (layers sharing a layout share the padded plan)."""
    from instruct_museformer.model.gathered import built_plan

    cfg = small_config("translation", attention_impl="gather")
    batch = _batch([5, 1, 9, 3, 12, 1, 4, 7], translation=True)
    layouts = LayoutPlanner(cfg, "cpu")(batch)
    every = {id(layout): layout for stack in (layouts.encoder, layouts.decoder) for layer in stack.layers
             for layout in layer}  # fmt: skip
    own = {key: built_plan(layout) for key, layout in every.items()}
    layouts.pad_plans()
    for layout in every.values():
        plan, padded = own[id(layout)], built_plan(layout)
        assert padded is not plan and padded.k_rows is not None
        assert (padded.run_first[: len(plan.run_first)] == plan.run_first).all()
        assert torch.equal(padded.k_rows[: len(plan.k_rows)], plan.k_rows)
    shared = [layer[1] for layer in layouts.decoder.layers]  # the layers' content layouts: one object
    assert all(built_plan(layout) is built_plan(shared[0]) for layout in shared)


def test_graph_batches_pad_to_bucketed_lengths():
    from instruct_museformer.train.graphs import GraphBatches, graph_length

    lengths = (1, 128, 129, 1000, 5000, 15360, 15361)
    assert [graph_length(n) for n in lengths] == [128, 128, 256, 1024, 5120, 15360, 16384]
    cfg = small_config("translation", attention_impl="gather")
    batch = _batch([5, 1, 9, 3, 12, 1, 4, 7], translation=True)
    prepared = GraphBatches(LayoutPlanner(cfg, "cpu", pad_plans=True))(batch)
    assert prepared.target.shape[1] == graph_length(batch.target.shape[1])
    assert prepared.source.tokens.shape[1] == graph_length(batch.source.tokens.shape[1])
    assert prepared.ntokens == batch.ntokens and prepared.layouts is not None
    # the padding changes nothing the model computes for the real positions
    model = build_model(cfg).eval()
    with torch.no_grad():
        logits = model(batch)
        torch.testing.assert_close(model(prepared)[:, : logits.shape[1]], logits, rtol=1e-5, atol=1e-5)


def test_trainer_steps_through_graphs_as_it_steps_eagerly(tmp_path: Path):
    """The trainer's graphed path (loss weights, dummy batches, gradients zeroed in place, update
    frequency) gives the eager updates: on the CPU a "replay" runs the step again on the recorded batch."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from train_helpers import make_data_bin, tiny_model

    from instruct_museformer.model.config import MuseformerConfig
    from instruct_museformer.train.feed import DataBinSource
    from instruct_museformer.train.options import parse_train_args
    from instruct_museformer.train.trainer import Trainer

    data_bin = make_data_bin(tmp_path)
    args = parse_train_args([str(data_bin), "--batch-size", "2", "--update-freq", "2", "--clip-norm", "1.0"])
    source = DataBinSource(data_bin, task="translation", source_lang="score", target_lang="perf")
    split = source.load("train", None)
    one, two = (split.collate([split.dataset[i] for i in ids]) for ids in ([0, 1], [2, 3]))
    groups = [[(False, one), (True, two)], [(False, two), (False, one)], [(False, one), (False, two)]]
    trainers = []
    for graphed in (False, True):
        torch.manual_seed(0)
        trainer = Trainer(args, tiny_model(MuseformerConfig(vocab_size=source.vocab_size, attention_embed_dim=16,
                                                            dropout=0.0)), device=CPU)  # fmt: skip
        if graphed:
            trainer._loss_weight = torch.ones(())
            trainer.graphs = StepGraphs(trainer._graph_step, CPU)
        trainers.append(trainer)
    for group in groups:
        eager, graphed = (trainer.train_step(group) for trainer in trainers)
        assert (graphed.nll, graphed.ntokens, graphed.gnorm) == pytest.approx((eager.nll, eager.ntokens, eager.gnorm))
    for a, b in zip(trainers[0].params, trainers[1].params, strict=True):
        torch.testing.assert_close(b, a)
    graphs = trainers[1].graphs
    assert (graphs.recorded, graphs.replays) == (2, 4)  # two shapes; the dummy batch ran too (weight 0)
    assert all(p.grad is not None for p in trainers[1].params)  # zeroed in place, never dropped

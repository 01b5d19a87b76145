"""Layouts and gather plans of a batch moved off the CPU come from its host copy, with no read-back, or
from the data loader (``LayoutPlanner``), with the same result.

The "meta" device stands in for an accelerator here: its tensors have no data, so any copy back to the
host (``.cpu()``, ``int(t)``, ``.tolist()``) raises, the way a read-back would make the host wait for a GPU.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from model_helpers import VOCAB, random_layout_batch, small_config
from test_gathered import _layouts

from instruct_museformer.model import build_model
from instruct_museformer.model.gathered import CHUNK_KEYS, build_plan
from instruct_museformer.model.planning import LayoutPlanner

META = torch.device("meta")


def test_a_moved_batch_keeps_its_host_copy():
    batch = random_layout_batch(3, translation=True)
    moved = batch.to(META)
    assert moved.prev_output.tokens.device == META
    assert moved.prev_output.host is batch.prev_output and moved.source.host is batch.source
    assert moved.to(META).prev_output.host is batch.prev_output  # moved again: still the CPU original
    assert batch.to("cpu").prev_output.host is None  # nothing to keep on the CPU itself


@pytest.mark.parametrize("name", list(_layouts(0, 16)))
def test_plans_of_moved_layouts_are_read_off_the_host_copy(name: str):
    layout = _layouts(5, 16)[name]
    moved = layout.to(META)
    assert moved.host is layout and moved.q_class.device == META
    on_host, on_meta = build_plan(layout), build_plan(moved)
    assert (on_host is None) == (on_meta is None)
    if on_host is None:
        return
    assert on_meta.k_rows.device == META and on_meta.runs.device == META
    assert on_meta.k_rows.shape == on_host.k_rows.shape
    for field in ("run_first", "run_queries", "run_keys"):
        np.testing.assert_array_equal(getattr(on_meta, field), getattr(on_host, field))
    assert (on_meta.causal, on_meta.distinct_keys) == (on_host.causal, on_host.distinct_keys)


@pytest.mark.parametrize("task", ["language_modeling", "translation"])
def test_model_forward_on_a_moved_batch_reads_nothing_back(task: str):
    """The whole forward on meta tensors: layouts, summaries and embeddings need no value from the device."""
    torch.manual_seed(0)
    model = build_model(small_config(task)).to(META)
    batch = random_layout_batch(4, translation=task == "translation").to(META)
    logits = model(batch)
    assert logits.device == META and logits.shape == (*batch.target.shape, VOCAB)


@pytest.mark.parametrize("impl", ["reference", "gather"])
@pytest.mark.parametrize("task", ["language_modeling", "translation"])
def test_layouts_prepared_by_the_planner_give_the_same_forward(task: str, impl: str):
    """What the data loader's workers build (``LayoutPlanner``), pickled across the process boundary, is
    what the model would have built itself: same logits and gradients."""
    torch.manual_seed(0)
    model = build_model(small_config(task, attention_impl=impl))
    batch = random_layout_batch(6, translation=task == "translation")
    results = []
    for prepared in (False, True):
        if prepared:
            batch.layouts = pickle.loads(pickle.dumps(LayoutPlanner(model.cfg, "cpu")(batch)))
        model.zero_grad()
        logits = model(batch)
        logits.square().sum().backward()
        results.append((logits.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=0, atol=0)
    for got, want in zip(results[1][1], results[0][1], strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_prepared_layouts_keep_their_sharing_and_plans_through_pickling():
    cfg = small_config("translation", attention_impl="gather", con2con="((((-1, 0),),),)")
    layouts = pickle.loads(pickle.dumps(LayoutPlanner(cfg, "cpu")(random_layout_batch(7, translation=True))))
    decoder = layouts.decoder
    assert decoder.layers[0][1] is decoder.layers[1][1]  # layers repeating a scheme share a layout
    plan = decoder.layers[0][1]._gather[CHUNK_KEYS]
    assert plan.k_rows is None  # pickled without its tensors: made where the plan is used
    moved = decoder.to(META)
    assert moved.layers[0][1]._gather[CHUNK_KEYS].k_rows.device == META
    on_cpu = decoder.to(torch.device("cpu")).layers[0][1]._gather[CHUNK_KEYS]
    fresh = build_plan(decoder.layers[0][1])
    torch.testing.assert_close(on_cpu.k_rows, fresh.k_rows)
    torch.testing.assert_close(on_cpu.runs, fresh.runs)


def test_model_forward_with_prepared_layouts_on_a_moved_batch():
    torch.manual_seed(0)
    model = build_model(small_config("translation")).to(META)
    batch = random_layout_batch(8, translation=True)
    batch.layouts = LayoutPlanner(model.cfg, "cuda")(batch)  # built on the host, moved by the forward
    logits = model(batch.to(META))
    assert logits.device == META and logits.shape == (*batch.target.shape, VOCAB)


def test_layouts_built_for_another_attention_path_are_refused():
    model = build_model(small_config("language_modeling", attention_impl="auto"))  # the CPU: reference path
    batch = random_layout_batch(9)
    batch.layouts = LayoutPlanner(model.cfg, "cuda")(batch)  # the GPU's gather path pads to the tile size
    with pytest.raises(ValueError, match="layouts"):
        model(batch)

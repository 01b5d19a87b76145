"""Layouts and gather plans of a batch moved off the CPU come from its host copy, with no read-back.

The "meta" device stands in for an accelerator here: its tensors have no data, so any copy back to the
host (``.cpu()``, ``int(t)``, ``.tolist()``) raises, the way a read-back would make the host wait for a GPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_helpers import VOCAB, random_layout_batch, small_config
from test_gathered import _layouts

from instruct_museformer.model import build_model
from instruct_museformer.model.gathered import build_plan

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

"""CUDA graphs of training steps: a step's forward and backward recorded once, then replayed per batch.

Below ~30,000 tokens the FC model's training step is bound by the host, not the GPU: ~540 kernel launches
and their Python (autograd, the gathered attention's bookkeeping) take about twice the GPU time
(docs/benchmarks.md). A CUDA graph replays all of a step's kernels with one launch.

A graph fixes everything the host decided while it was recorded: the shapes, and the host values the
forward reads -- for the gather path, what each plan's ``graph_key`` names (grid extent, flags). So
graphs are kept per batch *signature* (``graph_inputs``): the shapes of the batch's tensors, its plans'
keys and the structure that links them. A batch with a recorded signature has its tensors copied into the
recorded batch's (one ``_foreach_copy_``) and the graph replayed; a new signature runs eagerly once (which
also warms up what must not happen during recording: Triton compilation, lazy initialisation, the gradient
tensors) and is then recorded. Batches padded to bucketed lengths and plans grown to bucketed capacities
(``GraphBatches``, ``GatherPlan.padded``) make a corpus's batches share signatures. All graphs share one
memory pool, so together they take about the memory of one step, not one step each.

What a graph does not see, it must not depend on: the attention layouts' own tensors are not inputs (on
the gather path the forward reads only their plans), so every layout must have a gather plan and the
problems must take the gather path's kernels (CUDA, half precision under autocast). Gradients accumulate
in place into the parameters' ``.grad`` tensors, which must therefore stay the same tensors: zero them in
place (``zero_grad(set_to_none=False)``), never set them to None while graphs are kept. Tensors a step
returns belong to the graph's memory and are overwritten by the next replay: ``__call__`` returns copies.

On a CPU (tests) the same bookkeeping runs with a "recording" that simply runs the step again on the
recorded batch: what the step reads from the recorded batch rather than from the new one shows up there.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch

from ..data.batch import BarTokens, Batch
from ..model.gathered import GatherPlan, built_plan
from ..model.masks import AttentionLayout, BarLayout
from ..model.planning import BatchLayouts, LayoutPlanner, StackLayouts


def graph_length(length: int) -> int:
    """A sequence length rounded up to its bucket: a multiple of 1/16 of its power of two (>= 128), so at
    most 6.25% padding, ~8 buckets per doubling of the length."""
    bucket = 1 << max(length.bit_length() - 4, 7)
    return -(-length // bucket) * bucket


class GraphBatches:
    """What the data loader's workers do to each batch for graphed steps (picklable): pad both sides to
    their bucketed lengths (``graph_length``; pieces of a corpus have all lengths, graphs are per shape)
    and attach the layouts, plans padded (the planner's ``pad_plans``)."""

    def __init__(self, planner: LayoutPlanner | None) -> None:
        self.planner = planner

    def __call__(self, batch: Batch) -> Batch:
        source = None if batch.source is None else graph_length(batch.source.tokens.shape[1])
        batch = batch.pad_to(graph_length(batch.target.shape[1]), source)
        return batch if self.planner is None else self.planner.prepare(batch)


def graph_inputs(batch: Batch) -> tuple[tuple, list[torch.Tensor]]:
    """(signature, input tensors) of a batch whose layouts are on its device: two batches with equal
    signatures can share a graph, the second's tensors copied over the first's in this order."""
    key: list[Any] = []
    tensors: list[torch.Tensor] = []
    _walk(batch, key, tensors, {})
    return tuple(key), tensors


def _walk(obj: Any, key: list[Any], tensors: list[torch.Tensor], seen: dict[int, int]) -> None:
    """Append ``obj``'s part of the signature to ``key`` and its input tensors to ``tensors``.

    Only what a graphed forward reads: a batch's ``ntokens`` and ``ids`` are for the trainer, a bar layout's
    ``num_bars`` and an attention layout's tensors for the paths that build masks (not the gather path)."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        key.append(obj)
    elif isinstance(obj, torch.Tensor):
        key.append((tuple(obj.shape), obj.dtype, obj.device))
        tensors.append(obj)
    elif isinstance(obj, (tuple, list)):
        key.append(len(obj))
        for item in obj:
            _walk(item, key, tensors, seen)
    elif isinstance(obj, (AttentionLayout, GatherPlan)):  # shared by layers: recorded once, then referred to
        if id(obj) in seen:
            key.append(("same", seen[id(obj)]))
            return
        seen[id(obj)] = len(seen)
        if isinstance(obj, GatherPlan):
            if obj.k_rows is None:
                raise ValueError("graph_inputs needs the batch's layouts on its device (BatchLayouts.to)")
            key.append(obj.graph_key())
            _walk(obj.device_tensors(), key, tensors, seen)
            return
        plan = built_plan(obj)
        if plan is None:  # the forward would read the layout's own tensors, which are not inputs
            raise ValueError("CUDA graphs need a gather plan for every attention layout (the gather path)")
        key.append(("layout", obj.segments is not None))
        _walk(plan, key, tensors, seen)
    elif isinstance(obj, Batch):
        _walk((obj.prev_output, obj.target, obj.source, obj.layouts), key, tensors, seen)
    elif isinstance(obj, BarTokens):
        _walk(obj.as_tuple(), key, tensors, seen)
    elif isinstance(obj, BatchLayouts):
        _walk((obj.decoder, obj.encoder), key, tensors, seen)
    elif isinstance(obj, StackLayouts):
        _walk((obj.side, obj.layers), key, tensors, seen)
    elif isinstance(obj, BarLayout):
        _walk((obj.bar, obj.valid, obj.sum_bar, obj.sum_valid, obj.sum_ids, obj.num_summary), key, tensors, seen)
    else:
        raise TypeError(f"graph_inputs: cannot tell what a forward reads of a {type(obj).__name__}")


@dataclasses.dataclass
class _Recorded:
    batch: Batch  # the batch the graphs read: its tensors are their inputs
    inputs: list[torch.Tensor]
    graphs: tuple[torch.cuda.CUDAGraph, ...]  # forward, backward; none on the CPU (``batch`` is run again)
    output: torch.Tensor


class StepGraphs:
    """``step(batch) -> (loss, output)`` -- a forward; ``loss.backward()`` adds the gradients into ``.grad``,
    ``output`` is what the caller wants back -- run through CUDA graphs, one pair (forward, backward) per
    batch signature, at most ``max_graphs`` pairs kept (the least recently used dropped). Two graphs rather
    than one: launching a graph costs host time in proportion to its kernels (~1-2 us each), and the
    backward's launch then overlaps the forward's run.

    ``planner`` builds a batch's layouts where it comes without (``Batch.layouts``); they are moved to the
    device and their plans padded to bucketed capacities (``BatchLayouts.pad_plans``) before the signature
    is taken. Counters: ``recorded`` signatures, ``replays``, ``eager`` steps (each new signature's first).
    """

    def __init__(
        self,
        step: Callable[[Batch], tuple[torch.Tensor, torch.Tensor]],
        device: torch.device,
        planner: LayoutPlanner | None = None,
        max_graphs: int = 8,
    ) -> None:
        self.step, self.device, self.planner, self.max_graphs = step, device, planner, max_graphs
        self._graphs: OrderedDict[tuple, _Recorded] = OrderedDict()
        self.recorded = self.replays = self.eager = 0
        cuda = device.type == "cuda"
        self._stream = torch.cuda.Stream(device) if cuda else None
        self._pool = torch.cuda.graph_pool_handle() if cuda else None  # shared: graphs reuse each other's memory

    def prepare(self, batch: Batch) -> Batch:
        """The batch on the device with its layouts there too, plans padded."""
        batch = batch.to(self.device) if batch.target.device != self.device else batch
        layouts = batch.layouts
        if layouts is None and self.planner is not None:
            layouts = self.planner(batch)
        if layouts is not None:
            layouts = layouts.to(self.device)
            layouts.pad_plans()
        return dataclasses.replace(batch, layouts=layouts)

    def __call__(self, batch: Batch) -> torch.Tensor:
        batch = self.prepare(batch)
        key, inputs = graph_inputs(batch)
        recorded = self._graphs.get(key)
        if recorded is not None:
            self._graphs.move_to_end(key)
            torch._foreach_copy_(recorded.inputs, inputs)
            self.replays += 1
            if not recorded.graphs:
                return self._forward_backward(recorded.batch).clone()
            for graph in recorded.graphs:
                graph.replay()
            return recorded.output.clone()
        output = self._run_eagerly(batch)
        self._record(key, batch, inputs)
        return output

    def _forward_backward(self, batch: Batch) -> torch.Tensor:
        loss, output = self.step(batch)
        loss.backward()
        return output

    def _run_eagerly(self, batch: Batch) -> torch.Tensor:
        """The step on the recording stream: its lazy set-up (kernels compiled, gradients allocated) happens
        there, outside any recording."""
        self.eager += 1
        if self._stream is None:
            return self._forward_backward(batch)
        self._stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self._stream):
            output = self._forward_backward(batch)
        torch.cuda.current_stream(self.device).wait_stream(self._stream)
        return output

    def _record(self, key: tuple, batch: Batch, inputs: list[torch.Tensor]) -> None:
        """Record the step on ``batch`` (nothing runs) and keep it under ``key``."""
        graphs: tuple[torch.cuda.CUDAGraph, ...] = ()
        output = torch.empty(0)
        if self._stream is not None:
            forward, backward = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
            with torch.cuda.graph(forward, pool=self._pool, stream=self._stream):
                loss, output = self.step(batch)
            with torch.cuda.graph(backward, pool=self._pool, stream=self._stream):
                loss.backward()  # its saved tensors: the forward graph's, kept in the shared pool
            graphs = (forward, backward)
        self._graphs[key] = _Recorded(batch, inputs, graphs, output)
        self.recorded += 1
        while len(self._graphs) > self.max_graphs:
            self._graphs.popitem(last=False)

    def __len__(self) -> int:
        return len(self._graphs)

"""How often `imf train --cuda-graphs` can replay a graph: batch signatures of a real training epoch.

A CUDA graph of a training step serves the batches of one signature (``train.graphs``): the padded shapes
and the gather plans' bucketed extents. This walks one epoch of a data-bin's training split as `imf train`
batches it, builds each batch's layouts (plans padded, as with --cuda-graphs) and counts the distinct
signatures and, for a few --cuda-graphs-max values, how many steps an LRU of that many graphs would
replay. Runs on the CPU (no graphs are recorded).

    python benchmarks/graph_signatures.py DATA-BIN (translation) [--task language_modeling] [--truncate 15360]
        [--batch-size 1 | --max-tokens 32768] [--chunk] [--limit N]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections import Counter, OrderedDict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from instruct_museformer.model.config import MuseformerConfig  # noqa: E402
from instruct_museformer.model.planning import LayoutPlanner  # noqa: E402
from instruct_museformer.train.feed import DataBinSource, epoch_batches  # noqa: E402
from instruct_museformer.train.graphs import GraphBatches, StepGraphs, graph_inputs  # noqa: E402


def lru_replays(keys: list[tuple], capacity: int) -> int:
    """Steps an LRU cache of ``capacity`` graphs would replay (every miss runs eagerly and records)."""
    cache: OrderedDict[tuple, None] = OrderedDict()
    hits = 0
    for key in keys:
        if key in cache:
            hits += 1
            cache.move_to_end(key)
            continue
        cache[key] = None
        if len(cache) > capacity:
            cache.popitem(last=False)
    return hits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data_bin", type=Path)
    parser.add_argument("--task", default="language_modeling", choices=("language_modeling", "translation"))
    parser.add_argument("--truncate", type=int, default=15360)
    parser.add_argument("--chunk", action="store_true", help="as --chunk-train")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--max-tokens", type=int, default=None)
    parser.add_argument("--tokens-per-sample", type=int, default=100000)
    parser.add_argument("--limit", type=int, default=0, help="only the first N batches (0: the epoch)")
    parser.add_argument("--no-pad-lengths", dest="pad_lengths", action="store_false",
                        help="batches at their own lengths (padded to 128 only), not to graph_length's buckets")
    parser.add_argument("--capacities", type=int, nargs="+", default=[1, 4, 8, 16, 32])
    args = parser.parse_args(argv)
    if args.batch_size is None and args.max_tokens is None:
        args.batch_size = 1
    # a translation data-bin serves the language model too: its performance side (the decoder's input)
    source = DataBinSource(args.data_bin, task="translation", source_lang="score", target_lang="perf",
                           beat_mask_ts=True)  # fmt: skip
    split = source.load("train", args.truncate, chunk=args.chunk)
    batches = epoch_batches(
        source, split, max_positions=args.tokens_per_sample, batch_size=args.batch_size, max_tokens=args.max_tokens,
        seed=1, epoch=1, shuffle=True, skip_invalid=True,
    )  # fmt: skip
    if args.limit:
        batches = batches[: args.limit]
    cfg = MuseformerConfig(vocab_size=source.vocab_size, task=args.task)
    # the plans the GPU would use (gather path), kept on the CPU here
    planner = LayoutPlanner(cfg, "cuda", pad_plans=True)
    prepare = GraphBatches(planner) if args.pad_lengths else planner.prepare
    graphs = StepGraphs(lambda batch: (batch.target, batch.target), torch.device("cpu"), planner)  # not run
    keys, lengths = [], Counter()
    start = time.perf_counter()
    for i, indices in enumerate(batches):
        batch = split.collate([split.dataset[j] for j in indices])
        if args.task == "language_modeling":
            batch = dataclasses.replace(batch, source=None)
        prepared = graphs.prepare(prepare(batch))
        keys.append(graph_inputs(prepared)[0])
        lengths[tuple(prepared.prev_output.tokens.shape)] += 1
        if (i + 1) % 200 == 0:
            print(f"{i + 1}/{len(batches)} batches, {len(set(keys))} signatures", file=sys.stderr, flush=True)
    result = {
        "data_bin": str(args.data_bin), "task": args.task, "truncate": args.truncate, "chunk": args.chunk,
        "batch_size": args.batch_size, "max_tokens": args.max_tokens, "pad_lengths": args.pad_lengths,
        "batches": len(keys),
        "signatures": len(set(keys)), "padded_shapes": len(lengths),
        "steps_of_the_most_common_shape": lengths.most_common(1)[0][1] if lengths else 0,
        "replayed_fraction_by_max_graphs": {c: round(lru_replays(keys, c) / max(len(keys), 1), 3)
                                            for c in args.capacities},
        "seconds": round(time.perf_counter() - start, 1),
    }  # fmt: skip
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

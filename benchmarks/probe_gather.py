"""GPU probe for the gather path (issue #3): where the host time of a forward's preparation goes, where a
training step's GPU time goes, where its memory peaks (against the dense model), and how the chunk size of
the FlashAttention kernel trades speed for memory.

    python benchmarks/probe_gather.py [--lengths 15360 65536] [--chunks 16384 65536] [--memory-length 65536]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_attention import VOCAB, DenseLM, fc_config, make_batch, profile, time_steps  # noqa: E402

from instruct_museformer.model import build_model, gathered  # noqa: E402
from instruct_museformer.model.masks import bar_layout, pad_bar_tokens, regular_layout, summary_layout  # noqa: E402
from instruct_museformer.model.scheme import parse_scheme  # noqa: E402


def prepare_phases(length: int, reps: int = 10) -> dict[str, float]:
    """Median host milliseconds of each step of one forward's preparation (synchronised after each)."""
    cfg = fc_config("gather", vocab_size=VOCAB)
    parts = {p: parse_scheme(p, getattr(cfg, p), 1, getattr(cfg, f"{p}_self"))[0]
             for p in ("con2con", "con2sum", "sum2con", "sum2sum")}
    batch = make_batch(length, 2, False, "cuda")
    times: dict[str, list[float]] = {}

    def timed(name: str, fn, *args):  # type: ignore[no-untyped-def]
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn(*args)
        torch.cuda.synchronize()
        times.setdefault(name, []).append((time.perf_counter() - t0) * 1000)
        return out

    def tables(*layouts):  # type: ignore[no-untyped-def]
        return [layout.table for layout in layouts]

    for _ in range(reps + 2):
        tokens = timed("pad", pad_bar_tokens, batch.prev_output, 128)
        side = timed("bar_layout", bar_layout, tokens, 1, 128)
        rx = timed("regular_layout", regular_layout, side, parts["con2con"], parts["con2sum"], True)
        sx = timed("summary_layout", summary_layout, side, parts["sum2con"], parts["sum2sum"])
        timed("tables", tables, rx, sx)
        timed("plan rx", gathered.build_plan, rx)
        timed("plan sx", gathered.build_plan, sx)
    result = {k: sorted(v[2:])[len(v[2:]) // 2] for k, v in times.items()}
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(5):
        gathered.build_plan(rx)
    torch.cuda.synchronize()
    prof.disable()
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(12)
    print(f"build_plan(rx) at {length}, 5 calls:\n{text.getvalue()}", flush=True)
    return result


def memory_phases(length: int, variant: str) -> dict[str, float]:
    """GiB allocated at points of a training step (bf16 autocast), after one warm-up step: at the end of the
    forward, the peak in it, before each layer's backward, and the peak of the step; weights and their
    gradients included (gradients kept from the warm-up step, as in training between optimiser steps)."""
    kind, _, impl = variant.partition(":")
    cfg = fc_config(impl or "gather", vocab_size=VOCAB, task="language_modeling", attention_dropout=0.0)
    torch.manual_seed(0)
    model = (DenseLM(cfg) if kind == "dense" else build_model(cfg)).cuda().train()
    if kind == "dense" and impl == "compiled":
        for layer in model.layers:
            layer.compile()
    batch = make_batch(length, 2, False, "cuda")
    gib = 2.0**30
    marks: dict[str, float] = {}
    layers = model.layers if kind == "dense" else model.decoder.layers

    def mark(name: str) -> None:
        marks[name] = torch.cuda.memory_allocated() / gib

    def watch(i: int) -> Callable[..., None]:
        def hook(_module: torch.nn.Module, _inputs: object, out: torch.Tensor) -> None:
            out.register_hook(lambda _grad: mark(f"bwd_layer{i}"))  # before the layer's backward

        return hook

    for i, layer in enumerate(layers):
        layer.register_forward_hook(watch(i))

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(batch)
        marks["forward_end"] = torch.cuda.memory_allocated() / gib
        marks["forward_peak"] = torch.cuda.max_memory_allocated() / gib
        loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), batch.target.view(-1))
        del logits
        loss.backward()
        marks["step_peak"] = torch.cuda.max_memory_allocated() / gib

    step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    marks.clear()
    marks["start"] = torch.cuda.memory_allocated() / gib
    step()
    return {k: round(v, 4) for k, v in marks.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[15360, 65536])
    parser.add_argument("--chunks", type=int, nargs="*", default=[])
    parser.add_argument("--memory-length", type=int, default=65536)
    parser.add_argument(
        "--memory-variants", nargs="*", default=["dense", "dense:compiled", "fc:gather", "fc:gather+cb"]
    )
    parser.add_argument("--impl", default="gather+cb")
    parser.add_argument("--profile-length", type=int, default=65536)
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, object] = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    for length in args.lengths:
        results[f"prepare_ms_{length}"] = prepare_phases(length)
        print(length, results[f"prepare_ms_{length}"], flush=True)
    if args.memory_length:
        for variant in args.memory_variants:
            results[f"memory_{variant}"] = memory_phases(args.memory_length, variant)
            print(variant, json.dumps(results[f"memory_{variant}"]), flush=True)
            torch.cuda.empty_cache()
    if args.profile_length:
        profile(args.profile_length, "cuda", out_dir, args.impl)  # bench_attention's, into profile.txt
    default = gathered.CHUNK_KEYS
    for chunk in args.chunks:
        gathered.CHUNK_KEYS = chunk
        for length in args.lengths:
            model = build_model(fc_config(args.impl, vocab_size=VOCAB, task="language_modeling", attention_dropout=0.0))
            row = time_steps(model.cuda(), make_batch(length, 2, False, "cuda"), 10, 3)
            row.update(chunk_keys=chunk, length=length)
            results.setdefault("chunks", []).append(row)  # type: ignore[union-attr]
            print(json.dumps(row), flush=True)
            del model
            torch.cuda.empty_cache()
    gathered.CHUNK_KEYS = default
    (out_dir / "probe_gather.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""GPU benchmark: Museformer's fine-/coarse-grained (FC) attention vs dense causal attention.

Training-step throughput (forward + backward, bf16 autocast) and peak memory of the default decoder-only
model (4 layers, width 512, 8 heads, FFN 2048) with FC attention -- through the bar-gathered path (``gather``,
the default on CUDA: the indexed Triton kernels; ``gather-flash``: FlashAttention on gathered chunks) and
through FlexAttention (``flex``) -- against the same model with
dense causal attention through ``scaled_dot_product_attention`` (FlashAttention), on realistic bar layouts
(bars of 30-300 tokens), plus the translation model. Before timing, each FC path is checked against the
dense reference path on the GPU: in float32 (outputs and gradients), and in bf16 against the float32
reference (FlashAttention has no float32 kernel, so that is where the gather path's kernel is checked).

    python benchmarks/bench_attention.py [--lengths 4096 15360 65536] [--impls gather flex] [--out DIR]

Prints a table last; writes ``bench.json`` under --out (default $OUT or .). Needs CUDA.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from instruct_museformer.data.batch import BarTokens, Batch, bar_ids_of  # noqa: E402
from instruct_museformer.model import (  # noqa: E402
    MuseformerConfig,
    build_model,
    gathered,  # noqa: E402
    indexed,
)
from instruct_museformer.model.attention import attend, prepare_layouts  # noqa: E402
from instruct_museformer.model.embeddings import BarEmbeddings  # noqa: E402
from instruct_museformer.model.gathered import gathered_attention, plan_for  # noqa: E402
from instruct_museformer.model.layers import FeedForward  # noqa: E402
from instruct_museformer.model.masks import bar_layout, pad_bar_tokens, regular_layout, summary_layout  # noqa: E402
from instruct_museformer.model.planning import LayoutPlanner  # noqa: E402
from instruct_museformer.model.scheme import parse_scheme  # noqa: E402
from instruct_museformer.tokens.specials import BAR, EOS  # noqa: E402
from instruct_museformer.train.graphs import StepGraphs, graph_inputs  # noqa: E402

VOCAB = 560
# "+prep": the batch's layouts and plans built beforehand, as `imf train`'s data loader workers build them
# (model.planning.LayoutPlanner; each step still moves them to the GPU);
# "+cb": MuseformerConfig.compile_blocks; "gather-flash": the gather path with FlashAttention on chunks of
# gathered keys instead of the indexed Triton kernels (gathered.KERNEL)
# "+graph": each step replayed from a CUDA graph (train.graphs.StepGraphs; plans padded to bucketed capacities);
# "gather-indexed": the indexed kernels also with attention dropout (what graphs need for it)
IMPLS = (
    "gather", "gather+cb", "gather+prep", "gather+cb+prep", "gather-flash", "gather-flash+cb", "gather-flash+prep",
    "gather+prep+graph", "gather+cb+prep+graph", "gather-indexed+prep", "gather-indexed+prep+graph", "flex", "flex+cb",
)  # fmt: skip


def fc_config(impl: str, **values: Any) -> MuseformerConfig:
    """The FC model's config for an ``--impls`` entry; sets the gather path's kernel for it."""
    name, *flags = impl.split("+")
    name, _, kernel = name.partition("-")
    gathered.KERNEL = kernel or "auto"
    return MuseformerConfig(**values, attention_impl=name, compile_blocks="cb" in flags)


# ---------------------------------------------------------------------------------------------------
# Inputs


def bar_tokens(lengths: list[int], gen: torch.Generator, prefix: bool) -> BarTokens:
    """One sequence of bars with the given lengths (Bar token last), optionally after an EOS prefix."""
    parts = [torch.tensor([EOS])] if prefix else []
    for n in lengths:
        parts.append(torch.cat([torch.randint(5, VOCAB, (n - 1,), generator=gen), torch.tensor([BAR])]))
    seq = torch.cat(parts)
    return _single(seq, gen)


def _single(seq: torch.Tensor, gen: torch.Generator) -> BarTokens:
    bars = bar_ids_of(seq)
    beats = torch.randint(1, 65, seq.shape, generator=gen) * (bars > 0)
    complete = torch.tensor([int((seq == BAR).sum())])
    return BarTokens(seq[None], bars[None], beats[None], torch.zeros(1, len(seq), dtype=torch.bool), complete)


def bar_lengths(total: int, gen: torch.Generator) -> list[int]:
    lengths, used = [], 0
    while used < total:
        n = int(torch.randint(30, 301, (1,), generator=gen))
        lengths.append(n)
        used += n
    return lengths


def make_batch(target_len: int, seed: int, translation: bool, device: str, reorder: bool = False) -> Batch:
    """prev_output of exactly ``target_len`` tokens (the last bar truncated), and a source of as many bars.
    ``reorder``: the same bars but the last in reverse order (another layout of the same size)."""
    gen = torch.Generator().manual_seed(seed)
    lengths = bar_lengths(target_len, gen)
    if reorder:
        lengths = lengths[-2::-1] + lengths[-1:]
    full = bar_tokens(lengths, gen, prefix=True)
    seq = full.tokens[0, :target_len]
    prev = _single(seq, gen)
    target = torch.cat([seq[1:], torch.tensor([EOS])])[None]
    source = None
    if translation:
        src_lengths = [max(2, n + int(torch.randint(-20, 21, (1,), generator=gen))) for n in lengths]
        src = bar_tokens(src_lengths, gen, prefix=False)
        seq_src = torch.cat([src.tokens[0], torch.tensor([EOS])])
        source = _single(seq_src, gen)
    batch = Batch(prev, target, source, target_len, torch.zeros(1, dtype=torch.long))
    return batch.to(device)


# ---------------------------------------------------------------------------------------------------
# Dense baseline: the same widths, causal self-attention over the regular tokens through SDPA.


class DenseLayer(nn.Module):
    def __init__(self, d: int, heads: int, ffn: int, dropout: float, attention_dropout: float = 0.0) -> None:
        super().__init__()
        self.heads, self.attention_dropout = heads, attention_dropout
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.ffn = FeedForward(d, ffn, "gelu")
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        p = self.attention_dropout if self.training else 0.0
        a = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)  # (B, H, T, dh)
        x = x + self.drop(self.out(a.transpose(1, 2).reshape(b, t, d)))
        return x + self.drop(self.ffn(self.norm2(x)))


class DenseLM(nn.Module):
    def __init__(self, cfg: MuseformerConfig) -> None:
        super().__init__()
        d = cfg.attention_embed_dim
        self.embed = BarEmbeddings(
            VOCAB, d, 0, cfg.bar_abs_pos_embed_dim, cfg.beat_abs_pos_embed_dim, dropout=cfg.dropout
        )
        self.layers = nn.ModuleList(
            DenseLayer(d, cfg.num_attention_heads, cfg.ffn_embed_dim, cfg.dropout, cfg.attention_dropout)
            for _ in range(cfg.num_layers)
        )
        self.norm = nn.LayerNorm(d)
        self.output = nn.Linear(d, VOCAB, bias=False)

    def forward(self, batch: Batch) -> torch.Tensor:
        p = batch.prev_output
        x = self.embed.regular(p.tokens, p.bar_ids, p.beat_ids)
        for layer in self.layers:
            x = layer(x)
        return self.output(self.norm(x)).float()


# ---------------------------------------------------------------------------------------------------
# Measurements


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def check_equivalence(task: str, length: int, device: str, impls: list[str]) -> dict[str, float]:
    """Each FC path vs reference (dense masks): logits and all gradients in float32, and in bf16 autocast
    against the float32 reference (with the reference's own bf16 error alongside, for scale)."""
    cfg = dict(vocab_size=VOCAB, task=task, dropout=0.0, attention_dropout=0.0)
    torch.manual_seed(0)
    ref = build_model(MuseformerConfig(**cfg, attention_impl="reference")).to(device)
    batch = make_batch(length, 1, task == "translation", device)
    weights = torch.randn(1, length, VOCAB, device=device)

    def run(model: nn.Module, bf16: bool) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            logits = model(batch)
        (logits * weights).sum().backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters()])
        model.zero_grad(set_to_none=True)
        return logits.detach(), grads

    base = run(ref, False)
    ref_bf16 = run(ref, True)
    result = {"reference_bf16_logits_rel_err": rel(ref_bf16[0], base[0]),
              "reference_bf16_grad_rel_err": rel(ref_bf16[1], base[1])}
    if any(impl.startswith("gather") for impl in impls):
        result.update(check_gather_kernel(batch, device))
    for impl in impls:
        model = build_model(fc_config(impl, **cfg)).to(device)
        model.load_state_dict(ref.state_dict())
        # float32 on the GPU: the gather path hands over to flex (FlashAttention has no float32 kernel)
        for bf16 in (False, True):
            logits, grads = run(model, bf16)
            tag = f"{impl}_bf16" if bf16 else impl
            result[f"{tag}_logits_rel_err"] = rel(logits, base[0])
            result[f"{tag}_grad_rel_err"] = rel(grads, base[1])
    if "gather" in impls:  # attention dropout: the indexed kernels' own
        gathered.KERNEL = "auto"
        model = build_model(MuseformerConfig(**{**cfg, "attention_dropout": 0.1}, attention_impl="gather")).to(device)
        model.load_state_dict(ref.state_dict())
        model.train()
        logits, grads = run(model, True)
        result["gather_dropout_finite"] = bool(logits.isfinite().all() and grads.isfinite().all())
        result["gather_dropout_logits_rel_change"] = rel(logits, base[0])
    return result


def check_graph_replay(task: str, length: int, device: str) -> dict[str, Any]:
    """A step replayed from a CUDA graph recorded on another batch of the same signature (the bars in another
    order) against the eager step on the replayed batch: loss and every gradient, with two eager steps for
    scale (the float32 atomics of the key/value gradients make runs differ in the last bits). Then with the
    recipe's dropout (0.1, attention dropout through the indexed kernels): each replay must draw new masks."""
    result: dict[str, Any] = {}
    batches = [make_batch(length, 1, task == "translation", device, reorder=r) for r in (False, True)]
    for dropout in (0.0, 0.1):
        cfg = fc_config("gather-indexed" if dropout else "gather", vocab_size=VOCAB, task=task, dropout=dropout,
                        attention_dropout=dropout)  # fmt: skip
        torch.manual_seed(0)
        model = build_model(cfg).to(device).train()
        step = graph_step(model)
        graphs = StepGraphs(step, torch.device(device), LayoutPlanner(cfg, "cuda", pad_plans=True))
        first, other = (graphs.prepare(b) for b in batches)
        tag = "graph_dropout" if dropout else "graph"
        result[f"{tag}_same_signature"] = graph_inputs(first)[0] == graph_inputs(other)[0]

        def grads(model: nn.Module = model) -> torch.Tensor:
            flat = torch.cat([p.grad.flatten() for p in model.parameters()])
            torch._foreach_zero_([p.grad for p in model.parameters()])
            return flat

        graphs(first)  # eager, then recorded
        grads()
        graphs(other)  # replayed where the signatures agree, else recorded too
        grads()
        runs = [(graphs(other), grads()), (graphs(other), grads())]  # replays either way
        result[f"{tag}_replays"] = graphs.replays
        if dropout:
            result[f"{tag}_finite"] = bool(all(torch.isfinite(x).all() for run in runs for x in run))
            result[f"{tag}_replays_loss_rel_change"] = rel(runs[0][0], runs[1][0])
            continue
        def eager_step(batch: Batch, step: Any = step) -> torch.Tensor:
            loss, output = step(batch)
            loss.backward()
            return output

        eager = [(eager_step(other), grads()), (eager_step(other), grads())]
        result[f"{tag}_loss_rel_err"] = rel(runs[0][0], eager[0][0])
        result[f"{tag}_grad_rel_err"] = rel(runs[0][1], eager[0][1])
        result[f"{tag}_eager_vs_eager_grad_rel_err"] = rel(eager[1][1], eager[0][1])
        result[f"{tag}_recorded_batch_loss_rel_diff"] = rel(eager_step(first), eager[0][0])  # another problem
        grads()
    gathered.KERNEL = "auto"
    return result


def check_gather_kernel(batch: Batch, device: str) -> dict[str, float]:
    """The gather path's kernels themselves on the decoder's regular-token layout: bf16 q, k, v through
    ``gathered_attention`` (FlashAttention on gathered chunks, and the indexed Triton kernels) against the
    reference path on the same values in float32 (outputs and gradients); bf16 rounding of the output
    bounds what agreement means (~4e-3)."""
    cfg = MuseformerConfig(vocab_size=VOCAB)
    c2c = parse_scheme("con2con", cfg.con2con, 1, cfg.con2con_self)[0]
    c2s = parse_scheme("con2sum", cfg.con2sum, 1, cfg.con2sum_self)[0]
    side = bar_layout(pad_bar_tokens(batch.prev_output, 128), 1, 128)
    layout = regular_layout(side, c2c, c2s, causal=True)
    plan = plan_for(layout)
    gen = torch.Generator(device=device).manual_seed(0)
    b, q_len = layout.q_class.shape
    k_len = layout.k_class.shape[1]
    shapes = [(b, 8, q_len, 64), (b, 8, k_len, 64), (b, 8, k_len, 64)]
    base = [torch.randn(*shape, device=device, generator=gen).bfloat16() for shape in shapes]
    weights = torch.randn(b, 8, q_len, 64, device=device, generator=gen)
    result = {}
    for kernel in ("reference", "flash", "indexed"):
        gathered.KERNEL = kernel if kernel != "reference" else "auto"
        q, k, v = (t.clone().requires_grad_() if kernel != "reference" else t.float().requires_grad_() for t in base)
        out = gathered_attention(q, k, v, plan) if kernel != "reference" else attend(q, k, v, layout, "reference", 128)
        (out.float() * weights).sum().backward()
        got = (out.detach().float(), torch.cat([t.grad.float().flatten() for t in (q, k, v)]))
        if kernel == "reference":
            ref = got
            continue
        result[f"gather_{kernel}_bf16_out_rel_err"] = rel(got[0], ref[0])
        result[f"gather_{kernel}_bf16_grad_rel_err"] = rel(got[1], ref[1])
    result.update(check_indexed_dropout(layout, plan, base, weights))
    gathered.KERNEL = "auto"
    return result


def check_indexed_dropout(layout: Any, plan: Any, base: list[torch.Tensor], weights: torch.Tensor) -> dict[str, float]:
    """The indexed kernels with attention dropout (bf16) against a float32 softmax over the layout's pairs
    with the kernels' own mask (``indexed.dropout_mask``), outputs and gradients; batch of one."""
    p, seed = 0.1, 1234
    gathered.KERNEL = "indexed"
    drawn, gathered._dropout_seed = gathered._dropout_seed, lambda device: torch.tensor([seed], device=device)
    try:
        results = []
        for fast in (True, False):
            q, k, v = (t.clone().requires_grad_() if fast else t.float().requires_grad_() for t in base)
            if fast:
                out = gathered_attention(q, k, v, plan, dropout_p=p)
            else:
                heads, q_len, k_len = q.shape[1], q.shape[2], k.shape[2]
                keep = indexed.dropout_mask(seed, p, q_len, k_len, heads, q.device)  # (H, Q, K)
                allowed = layout.dense()[0]  # (1, Q, K)
                scores = (q[0] @ k[0].transpose(1, 2)) / q.shape[-1] ** 0.5
                probs = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1).nan_to_num(0.0)
                out = ((probs * keep / (1 - p)) @ v[0])[None]
            (out.float() * weights).sum().backward()
            results.append((out.detach().float(), torch.cat([t.grad.float().flatten() for t in (q, k, v)])))
    finally:
        gathered._dropout_seed = drawn
    return {
        "indexed_dropout_bf16_out_rel_err": rel(results[0][0], results[1][0]),
        "indexed_dropout_bf16_grad_rel_err": rel(results[0][1], results[1][1]),
        "indexed_dropout_kept_fraction": float(keep[:, allowed[0]].float().mean()),
    }


def event_times(fn: Any, reps: int) -> list[float]:
    """Milliseconds of each of ``reps`` calls of ``fn()`` on the GPU, CUDA events around each (synchronised)."""
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return times


def timed(fn: Any, reps: int = 10, warmup: int = 2) -> float:
    """Median milliseconds of ``fn()`` on the GPU (CUDA events around each call), after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    return statistics.median(event_times(fn, reps))


def train_step(model: nn.Module, batch: Batch) -> None:
    """One training step without the optimiser: forward under bf16 autocast, cross-entropy, backward."""
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(batch)
    nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), batch.target.view(-1)).backward()
    for p in model.parameters():
        p.grad = None


def graph_step(model: nn.Module) -> Any:
    """The step CUDA graphs record (``StepGraphs``): as ``train_step``, gradients added into ``.grad``."""

    def step(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
            logits = model(batch)
        loss = nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), batch.target.view(-1))
        return loss, loss.detach()

    return step


def graphed_steps(model: nn.Module, planner: LayoutPlanner | None) -> Any:
    """A training step through ``StepGraphs``, gradients zeroed in place after each (one foreach call)."""
    graphs = StepGraphs(graph_step(model), torch.device("cuda"), planner)

    def step(batch: Batch) -> None:
        graphs(batch)
        torch._foreach_zero_([p.grad for p in model.parameters() if p.grad is not None])

    step.graphs = graphs  # type: ignore[attr-defined]
    return step


def time_steps(
    model: nn.Module, batch: Batch, steps: int, warmup: int, graphed: Any = None
) -> dict[str, float]:
    """Median forward+backward time (bf16 autocast) and peak memory over ``steps`` steps. ``graphed``: a
    ``graphed_steps`` step instead; its peak memory is taken from the first (eager) step and the recording
    on, as a replay allocates nothing the allocator sees."""
    model.train()
    host: list[float] = []  # seconds each step's call takes on the host (it returns before the GPU is done)

    def step() -> None:
        t0 = time.perf_counter()
        if graphed is not None:
            graphed(batch)
        else:
            train_step(model, batch)
        host.append(time.perf_counter() - t0)

    if graphed is not None:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    warm_s = time.perf_counter() - t0
    if graphed is None:
        torch.cuda.reset_peak_memory_stats()
    host.clear()
    times = [ms / 1000 for ms in event_times(step, steps)]
    host_ms = statistics.median(host) * 1000
    # back to back, one synchronisation at the end: a step's host work (the layouts and plans) overlaps the
    # device's work on the step before (imf train synchronises once per update: there the median applies)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    back_to_back = (time.perf_counter() - t0) / steps
    med = statistics.median(times)
    extra = {}
    if graphed is not None:
        g = graphed.graphs
        reserved = torch.cuda.memory_reserved() / 2**30
        extra = {"graphs_recorded": g.recorded, "graph_replays": g.replays, "reserved_gib": reserved}
    return extra | {
        "host_ms": host_ms,
        "back_to_back_ms": back_to_back * 1000,
        "back_to_back_tokens_per_s": batch.ntokens / back_to_back,
        "step_ms": med * 1000,
        "step_ms_spread": (max(times) - min(times)) * 1000,
        "tokens_per_s": batch.ntokens / med,
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
        "warmup_s": warm_s,
    }


def time_mask_build(batch: Batch, cfg: MuseformerConfig, reps: int = 10) -> float:
    """Milliseconds to derive one forward's decoder layouts and the kernels' inputs (shared by all layers):
    BlockMasks for flex, gather plans for gather (host time: nothing waits for the GPU)."""
    c2c = parse_scheme("con2con", cfg.con2con, 1, cfg.con2con_self)[0]
    c2s = parse_scheme("con2sum", cfg.con2sum, 1, cfg.con2sum_self)[0]
    sr = parse_scheme("sum2con", cfg.sum2con, 1, cfg.sum2con_self)[0]
    ss = parse_scheme("sum2sum", cfg.sum2sum, 1, cfg.sum2sum_self)[0]
    times = []
    for _ in range(reps + 2):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        # as the model does it: from the batch's host copy, moved to the GPU without waiting
        tokens = pad_bar_tokens(batch.prev_output.on_host(), cfg.block_size)
        side = bar_layout(tokens, 1, cfg.block_size)
        device = batch.prev_output.tokens.device
        rx = regular_layout(side, c2c, c2s, causal=True).to(device)
        sx = summary_layout(side, sr, ss).to(device)
        prepare_layouts((sx, rx), cfg.attention_impl, cfg.block_size)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[2:]) * 1000


def tile_density(batch: Batch, cfg: MuseformerConfig) -> dict[str, float]:
    """Fraction of the causal tiles the FC mask visits (partial / full), for the record."""
    c2c = parse_scheme("con2con", cfg.con2con, 1, cfg.con2con_self)[0]
    c2s = parse_scheme("con2sum", cfg.con2sum, 1, cfg.con2sum_self)[0]
    tokens = pad_bar_tokens(batch.prev_output, cfg.block_size)
    side = bar_layout(tokens, 1, cfg.block_size)
    partial, full = regular_layout(side, c2c, c2s, causal=True).tile_kinds(cfg.block_size)
    n = side.bar.shape[1] // cfg.block_size
    causal_tiles = n * (n + 1) / 2
    return {"partial_tiles": int(partial.sum()), "full_tiles": int(full.sum()), "dense_causal_tiles": causal_tiles}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 15360, 65536])
    parser.add_argument("--impls", nargs="+", default=["gather", "flex"], choices=IMPLS)
    parser.add_argument("--dense-compiled", action="store_true", help="also time the dense model compiled")
    parser.add_argument("--dense-graph", action="store_true", help="also time the dense model's steps as CUDA graphs")
    parser.add_argument("--check-only", action="store_true", help="run the checks, time nothing")
    parser.add_argument("--chunk-keys", type=int, default=None, help="gathered keys per kernel call (gather)")
    parser.add_argument("--translation-length", type=int, default=15360)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--extra-block-sizes", type=int, nargs="*", default=[64])
    parser.add_argument("--compiled-lengths", type=int, nargs="*", default=[15360, 65536])
    parser.add_argument("--profile-length", type=int, default=15360)
    parser.add_argument("--profile-impl", default="gather", choices=IMPLS, help="(with --dense-compiled: also dense)")
    parser.add_argument("--skip-check", action="store_true")
    parser.add_argument("--attention-dropout", type=float, default=0.0, help="in both models (recipe: 0.1)")
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs CUDA", file=sys.stderr)
        return 2
    warnings.simplefilter("ignore")
    if args.chunk_keys:
        gathered.CHUNK_KEYS = args.chunk_keys
    torch._dynamo.config.cache_size_limit = 64  # one compiled flex kernel per attention problem and shape
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = "cuda"
    env = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "command": "python " + " ".join(sys.argv),
    }
    results: dict[str, Any] = {"env": env, "check": {}, "rows": []}
    print(json.dumps(env), flush=True)

    def save() -> None:
        tmp = out_dir / "bench.json.tmp"
        tmp.write_text(json.dumps(results, indent=2))
        tmp.replace(out_dir / "bench.json")

    if not args.skip_check:
        for task, length in (("language_modeling", 3000), ("translation", 2000)):
            t0 = time.perf_counter()
            results["check"][task] = check_equivalence(task, length, device, args.impls)
            results["check"][task]["length"] = length
            print(f"check {task} T={length}: {results['check'][task]} ({time.perf_counter() - t0:.0f}s)", flush=True)
            save()
        if any("+graph" in impl for impl in args.impls):
            for task, length in (("language_modeling", 15360), ("translation", 4096)):
                t0 = time.perf_counter()
                results["check"][f"{task} graphs"] = check_graph_replay(task, length, device)
                print(f"check {task} graphs T={length}: {results['check'][f'{task} graphs']} "
                      f"({time.perf_counter() - t0:.0f}s)", flush=True)  # fmt: skip
                save()
    if args.check_only:
        return 0

    def run(
        kind: str, task: str, length: int, block_size: int = 128, compiled: bool = False, impl: str = "",
        graph: bool = False,
    ) -> None:
        impl = impl or args.impls[0]
        graph = graph or kind == "fc" and "+graph" in impl
        cfg = fc_config(impl, vocab_size=VOCAB, task=task, block_size=block_size)
        cfg.attention_dropout = args.attention_dropout  # the same in both models (0: FlexAttention has none)
        torch.manual_seed(0)
        gc.collect()
        torch.cuda.empty_cache()
        baseline = torch.cuda.memory_allocated()  # what earlier variants left (0: nothing)
        model = (DenseLM(cfg) if kind == "dense" else build_model(cfg)).to(device)
        row: dict[str, Any] = {"kind": kind, "task": task, "length": length, "block_size": block_size}
        row["baseline_gib"] = baseline / 2**30
        row["attention_dropout"] = args.attention_dropout
        if kind == "fc":
            row["impl"] = impl
        row["compiled_layers"] = compiled
        row["graph"] = graph
        try:
            if compiled:  # torch.compile each layer (both models): fused elementwise ops, less Python
                for layers in _layer_lists(model):
                    for layer in layers:
                        layer.compile()
            batch = make_batch(length, 2, task == "translation", device)
            planner = LayoutPlanner(cfg, "cuda", pad_plans=graph) if kind == "fc" else None
            if "+prep" in impl and planner is not None:
                batch.layouts = planner(batch)
            graphed = graphed_steps(model, planner) if graph else None
            row.update(time_steps(model, batch, args.steps, args.warmup, graphed))
            del graphed
            if kind == "fc" and task == "language_modeling" and not compiled and block_size == 128:
                row["mask_build_ms"] = time_mask_build(batch, cfg)
                row.update(tile_density(batch, cfg))
        except Exception as exc:  # noqa: BLE001 - a failed variant must not lose the others
            row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        del model
        torch.cuda.empty_cache()
        results["rows"].append(row)
        print(json.dumps(row), flush=True)
        save()

    def table(compiled: bool) -> None:
        rows = [r for r in results["rows"] if r.get("compiled_layers") == compiled]
        title = "layers compiled (both models)" if compiled else "eager layers"
        print(f"\n{title}: {env['device']}, torch {env['torch']}")
        print(
            "| model | impl | tokens | dense step | FC step | dense tok/s | FC tok/s | FC/dense | dense GiB | FC GiB "
            "| back to back: dense / FC step, FC/dense |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            if r["kind"] != "fc":
                continue
            # the faster dense baseline at this length (eager, or compiled with --dense-compiled)
            denses = [d for d in results["rows"] if d["kind"] == "dense" and d["length"] == r["length"]]
            denses = [d for d in denses if "error" not in d and (not compiled or d.get("compiled_layers"))]
            dense = min(denses, key=lambda d: d["step_ms"], default=None)
            if "error" in r:
                print(f"| {r['task']} bs{r['block_size']} | {r['impl']} | {r['length']} | error: {r['error'][:80]} |")
                continue
            name = "LM" if r["task"] == "language_modeling" else "translation"
            if dense is None or "error" in dense or r["task"] != "language_modeling":
                print(
                    f"| {name} (bs {r['block_size']}) | {r['impl']} | {r['length']} | - | {r['step_ms']:.1f} ms | - | "
                    f"{r['tokens_per_s']:,.0f} | - | - | {r['peak_mem_gib']:.3f} |"
                )
                continue
            variant = ("compiled" if dense.get("compiled_layers") else "eager") + (" graph" * bool(dense.get("graph")))
            print(
                f"| {name} (bs {r['block_size']}) | {r['impl']} | {r['length']} | "
                f"{dense['step_ms']:.1f} ms ({variant}) | "
                f"{r['step_ms']:.1f} ms | {dense['tokens_per_s']:,.0f} | "
                f"{r['tokens_per_s']:,.0f} | {r['tokens_per_s'] / dense['tokens_per_s']:.2f}x | "
                f"{dense['peak_mem_gib']:.3f} | {r['peak_mem_gib']:.3f} | {dense['back_to_back_ms']:.1f} / "
                f"{r['back_to_back_ms']:.1f} ms, {dense['back_to_back_ms'] / r['back_to_back_ms']:.2f}x |"
            )

    for length in args.lengths:
        run("dense", "language_modeling", length)
        if args.dense_compiled:
            run("dense", "language_modeling", length, compiled=True)
        if args.dense_graph:
            run("dense", "language_modeling", length, graph=True)
            if args.dense_compiled:
                run("dense", "language_modeling", length, compiled=True, graph=True)
        for impl in args.impls:
            run("fc", "language_modeling", length, impl=impl)
    if args.translation_length:
        for impl in args.impls:
            run("fc", "translation", args.translation_length, impl=impl)
    table(False)
    if args.profile_length:
        profile(args.profile_length, device, out_dir, args.profile_impl)
        if args.dense_compiled:
            profile(args.profile_length, device, out_dir, args.profile_impl, dense=True)
    for bs in args.extra_block_sizes:
        for length in args.lengths[1:]:
            run("fc", "language_modeling", length, bs, impl="flex")
    if args.compiled_lengths:
        for length in args.compiled_lengths:
            run("dense", "language_modeling", length, compiled=True)
            for impl in args.impls:
                run("fc", "language_modeling", length, compiled=True, impl=impl)
        table(True)
    table(False)
    return 0


def _layer_lists(model: nn.Module) -> list[nn.ModuleList]:
    if isinstance(model, DenseLM):
        return [model.layers]
    return [m.layers for m in (getattr(model, "encoder", None), model.decoder) if m is not None]


def profile(length: int, device: str, out_dir: Path, impl: str, dense: bool = False) -> None:
    """Where one training step's time goes: top CUDA kernels and CPU vs GPU totals (eager steps; "+prep":
    layouts prepared beforehand, "+graph": with the plans padded as for graphs; ``dense``: the compiled dense
    model instead)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    cfg = fc_config(impl, vocab_size=VOCAB, task="language_modeling", attention_dropout=0.0)
    torch.manual_seed(0)
    model = (DenseLM(cfg) if dense else build_model(cfg)).to(device).train()
    if dense:
        for layer in model.layers:
            layer.compile()
    batch = make_batch(length, 2, False, device)
    if "+prep" in impl and not dense:
        batch.layouts = LayoutPlanner(cfg, "cuda", pad_plans="+graph" in impl)(batch)

    def step() -> None:
        train_step(model, batch)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(2):
            step()
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=70)
    host = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10, max_name_column_width=70)
    name = "dense LM (compiled layers)" if dense else f"FC LM ({impl})"
    print(f"\nprofile: {name}, {length} tokens, 2 steps\n{table}\nby host time:\n{host}", flush=True)
    (out_dir / f"profile_{'dense' if dense else impl.replace('+', '_')}.txt").write_text(table + "\n" + host)


if __name__ == "__main__":
    raise SystemExit(main())

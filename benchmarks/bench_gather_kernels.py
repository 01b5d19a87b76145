"""GPU benchmark of the gather path's attention call alone: FlashAttention on chunks of gathered keys
(``flash``) against the indexed Triton kernels (``indexed``), on the default model's decoder layouts.

Per length: the regular-token layout (con2con / con2sum of the default scheme, causal) and the summary
layout; bf16 q, k, v laid out as the model's joint projection (rows of 3 x 512); forward and forward +
backward times (CUDA events, median) and the agreement of the indexed kernels with FlashAttention's
results; then a sweep of the indexed kernels' tile sizes on the regular layout.

    python benchmarks/bench_gather_kernels.py [--lengths 15360 65536] [--sweep]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_attention import VOCAB, make_batch, timed  # noqa: E402

from instruct_museformer.model import MuseformerConfig, gathered, indexed  # noqa: E402
from instruct_museformer.model.gathered import gathered_attention, plan_for  # noqa: E402
from instruct_museformer.model.masks import bar_layout, pad_bar_tokens, regular_layout, summary_layout  # noqa: E402
from instruct_museformer.model.scheme import parse_scheme  # noqa: E402

HEADS, HEAD_DIM = 8, 64


def layouts(length: int) -> dict[str, Any]:
    cfg = MuseformerConfig(vocab_size=VOCAB)
    scheme = {part: parse_scheme(part, getattr(cfg, part), 1, getattr(cfg, f"{part}_self"))[0]
              for part in ("con2con", "con2sum", "sum2con", "sum2sum")}  # fmt: skip
    batch = make_batch(length, 2, False, "cuda")
    side = bar_layout(pad_bar_tokens(batch.prev_output, 128), 1, 128)
    return {
        "regular": regular_layout(side, scheme["con2con"], scheme["con2sum"], causal=True),
        "summary": summary_layout(side, scheme["sum2con"], scheme["sum2sum"]),
    }


def inputs(layout: Any) -> tuple[torch.Tensor, ...]:
    """q (B, H, Q, dh), k, v (B, H, K, dh) as views of one projection, as in the model."""
    b, q_len = layout.q_class.shape
    k_len = layout.k_class.shape[1]
    gen = torch.Generator(device="cuda").manual_seed(0)
    qkv = torch.randn(b, k_len, 3, HEADS, HEAD_DIM, device="cuda", generator=gen, dtype=torch.bfloat16)
    q = qkv[:, k_len - q_len :, 0].transpose(1, 2)
    k, v = qkv[:, :, 1].transpose(1, 2), qkv[:, :, 2].transpose(1, 2)
    return q, k, v


def measure(layout: Any, kernel: str) -> dict[str, Any]:
    gathered.KERNEL = kernel
    plan = plan_for(layout)
    q, k, v = (t.detach().requires_grad_() for t in inputs(layout))
    grad = torch.randn(q.shape, device=q.device, dtype=q.dtype, generator=torch.Generator("cuda").manual_seed(1))

    def forward() -> torch.Tensor:
        with torch.no_grad():
            return gathered_attention(q, k, v, plan)

    def both() -> None:
        out = gathered_attention(q, k, v, plan)
        out.backward(grad)
        q.grad = k.grad = v.grad = None

    row = {"kernel": kernel, "fwd_ms": timed(forward, 20, 3), "fwd_bwd_ms": timed(both, 20, 3)}
    if kernel == "indexed":  # GPU time alone: forward and backward replayed from a CUDA graph (no host work)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            torch.autograd.grad(gathered_attention(q, k, v, plan), (q, k, v), grad)
        row["fwd_bwd_gpu_ms"] = timed(graph.replay, 20, 3)
    out = gathered_attention(q, k, v, plan)
    out.backward(grad)
    row["result"] = [out.detach().float(), *(t.grad.float() for t in (q, k, v))]
    q.grad = k.grad = v.grad = None
    gathered.KERNEL = "auto"
    return row


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[15360, 65536])
    parser.add_argument("--sweep", action="store_true", help="tile sizes of the indexed kernels")
    parser.add_argument("--sweep-keys", action="store_true", help="tile sizes of the key/value gradient kernel")
    args = parser.parse_args()
    print(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__}), flush=True)
    for length in args.lengths:
        for name, layout in layouts(length).items():
            plan = plan_for(layout)
            q, k = plan.run_queries, plan.run_keys
            pairs = int((q * k - (q * (q - 1) // 2 if plan.causal else 0)).sum())
            rows = {kernel: measure(layout, kernel) for kernel in ("flash", "indexed")}
            ref = rows["flash"].pop("result")
            got = rows["indexed"].pop("result")
            errors = {f"rel_{n}": rel(a, b) for n, a, b in zip(("out", "dq", "dk", "dv"), got, ref, strict=True)}
            print(json.dumps({"length": length, "layout": name, "pairs": pairs, "runs": plan.runs.shape[0],
                              "max_q": plan.max_q, "max_k": plan.max_k, **rows, "indexed_vs_flash": errors}),
                  flush=True)  # fmt: skip
            if args.sweep and name == "regular" and length == args.lengths[0]:
                defaults = indexed.BLOCK_M, indexed.BLOCK_N, indexed.NUM_WARPS, indexed.NUM_STAGES
                for bm, bn, warps, stages in itertools.product((32, 64, 128), (32, 64, 128), (4, 8), (2, 3)):
                    indexed.BLOCK_M, indexed.BLOCK_N, indexed.NUM_WARPS, indexed.NUM_STAGES = bm, bn, warps, stages
                    try:
                        row = measure(layout, "indexed")
                        row.pop("result")
                    except Exception as exc:  # noqa: BLE001 - a config that does not compile: next
                        row = {"error": f"{type(exc).__name__}: {str(exc)[:120]}"}
                    print(json.dumps({"length": length, "block_m": bm, "block_n": bn, "warps": warps,
                                      "stages": stages, **row}), flush=True)  # fmt: skip
                indexed.BLOCK_M, indexed.BLOCK_N, indexed.NUM_WARPS, indexed.NUM_STAGES = defaults
            if args.sweep_keys and length == args.lengths[0]:
                sweep_keys(length, name)
    return 0


def sweep_keys(length: int, name: str) -> None:
    """The key/value gradient kernel's tile rows (plans made again for each), query block, warps, stages."""
    defaults = indexed.KEY_TILE, indexed.KV_BLOCK_M, indexed.KV_WARPS, indexed.KV_STAGES
    for tile, bm, warps, stages in itertools.product((64, 128), (32, 64), (4, 8), (2, 3, 4)):
        indexed.KEY_TILE, indexed.KV_BLOCK_M, indexed.KV_WARPS, indexed.KV_STAGES = tile, bm, warps, stages
        try:
            row = measure(layouts(length)[name], "indexed")  # fresh layouts: plans with these key tiles
            row.pop("result")
        except Exception as exc:  # noqa: BLE001 - a config that does not compile: next
            row = {"error": f"{type(exc).__name__}: {str(exc)[:120]}"}
        print(json.dumps({"length": length, "layout": name, "key_tile": tile, "kv_block_m": bm, "warps": warps,
                          "stages": stages, **row}), flush=True)  # fmt: skip
    indexed.KEY_TILE, indexed.KV_BLOCK_M, indexed.KV_WARPS, indexed.KV_STAGES = defaults


if __name__ == "__main__":
    raise SystemExit(main())

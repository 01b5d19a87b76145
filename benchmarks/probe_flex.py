"""GPU probe: one regular-token (``rx``) FlexAttention call of the default decoder, forward + backward, bf16.

Times the call alone for mask-function and tile-size variants, against causal SDPA on the same tokens, to
see what the kernels cost apart from the rest of the model:

    python benchmarks/probe_flex.py [--lengths 15360 65536] [--budget-s 120] [--out DIR]

Variants: ``table`` (offset-table lookup per pair), ``bits`` (``AttentionLayout.mask_mod``, the model's: the
64-bit offset word per key; int64 arithmetic up to commit c5196e4, two int32 halves since), ``bits32`` (a
stand-alone int32 version for batch 1), ``nomask`` (every
visited tile treated as full: a lower bound for this tile count), ``bits`` compiled for dynamic shapes (as
the model's shared compiled call ends up; ``_divisible``: told that the lengths are multiples of 128, as
the model does), ``bits`` with other block shapes (kernel options to match), and ``bits_strided`` (q, k, v
as views of one projection, as in the model). Writes ``probe.json`` under --out (default $OUT or .).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_attention import make_batch, timed  # noqa: E402
from instruct_museformer.model import MuseformerConfig  # noqa: E402
from instruct_museformer.model.masks import (  # noqa: E402
    _ordered,
    bar_layout,
    pad_bar_tokens,
    regular_layout,
)
from instruct_museformer.model.scheme import parse_scheme  # noqa: E402

VARIANTS: dict[str, tuple[str, tuple[int, int], dict[str, Any]]] = {
    "bits": ("bits", (128, 128), {}),
    "bits_dynamic": ("bits", (128, 128), {}),
    "bits_dynamic_divisible": ("bits", (128, 128), {"IS_DIVISIBLE": True}),
    "bits32": ("bits32", (128, 128), {}),
    "bits_strided": ("bits", (128, 128), {}),
    "table": ("table", (128, 128), {}),
    "nomask": ("nomask", (128, 128), {}),
    "bits_q128_kv64": (
        "bits",
        (128, 64),
        {
            "fwd_BLOCK_M": 128,
            "fwd_BLOCK_N": 64,
            "bwd_BLOCK_M1": 64,
            "bwd_BLOCK_N1": 64,
            "bwd_BLOCK_M2": 128,
            "bwd_BLOCK_N2": 64,
        },
    ),
    "bits_64": (
        "bits",
        (64, 64),
        {
            "fwd_BLOCK_M": 64,
            "fwd_BLOCK_N": 64,
            "bwd_BLOCK_M1": 64,
            "bwd_BLOCK_N1": 64,
            "bwd_BLOCK_M2": 64,
            "bwd_BLOCK_N2": 64,
        },
    ),
}


def block_mask_for(layout: Any, mask: str, block: tuple[int, int]) -> Any:
    from torch.nn.attention.flex_attention import BlockMask

    if mask == "bits":
        return layout.block_mask(block)
    if mask == "bits32":
        bm = layout.block_mask(block)
        return BlockMask(
            seq_lengths=bm.seq_lengths,
            **{name: getattr(bm, name) for name in BlockMask._TENSOR_ATTRS[:8]},
            BLOCK_SIZE=bm.BLOCK_SIZE,
            mask_mod=bits32_mask_mod(layout),
        )
    cpu = torch.device("cpu")
    k_pos = None if layout.k_pos is None else layout.k_pos.to(cpu)
    from instruct_museformer.model.masks import _class_table, _tile_kinds

    table = _class_table(layout.off.to(cpu), layout.num_bars)
    partial, full = _tile_kinds(layout.q_class.to(cpu), layout.k_class.to(cpu), table, k_pos, block)
    if mask == "nomask":
        full, partial = full | partial, torch.zeros_like(partial)
    num, idx = _ordered(partial)
    fnum, fidx = _ordered(full)
    mod = layout._table_mask_mod() if mask == "table" else None
    seq = (layout.q_class.shape[1], layout.k_class.shape[1])
    bm = BlockMask.from_kv_blocks(num, idx, fnum, fidx, BLOCK_SIZE=block, mask_mod=mod, seq_lengths=seq)
    return bm.to(layout.q_class.device)


def bits32_mask_mod(layout: Any) -> Any:
    """The int64-word predicate of the default causal ``rx`` with int32 arithmetic only (two half words)."""
    lo, words = layout._bit_words()
    n, width = layout.num_bars, 2 * layout.num_bars + 1
    row, k_bar = layout.k_code.div(width, rounding_mode="floor"), layout.k_code % width - n
    k_word = words[row.long()].reshape(-1)
    k_lo = (k_word & 0xFFFFFFFF).to(torch.int64).where(k_word & 0x80000000 == 0, (k_word & 0xFFFFFFFF) - (1 << 32))
    k_lo, k_hi = k_lo.int(), (k_word >> 32).int()
    q_val = torch.where(layout.q_kind == 0, torch.full_like(layout.q_bar, -(1 << 20)), layout.q_bar - lo + 1)
    q_val, k_bar, k_pos = q_val.reshape(-1).int(), k_bar.reshape(-1).int(), layout.k_pos

    def allowed(b: Any, h: Any, q: Any, kv: Any) -> Any:
        idx = (q_val[q] - k_bar[kv]).clamp(0, 63)
        word = torch.where(idx < 32, k_lo[kv], k_hi[kv])
        return (((word >> (idx & 31)) & 1) != 0) & (k_pos[kv] <= q)

    return allowed


def probe_length(length: int, names: list[str], deadline: float, c2c: Any, c2s: Any) -> list[dict[str, Any]]:
    """All variants at one length (those started before ``deadline``)."""
    from torch.nn.attention.flex_attention import flex_attention

    batch = make_batch(length, 2, False, "cuda")
    side = bar_layout(pad_bar_tokens(batch.prev_output, 128), 1, 128)
    layout = regular_layout(side, c2c, c2s, causal=True)
    r_len, k_len = side.bar.shape[1], layout.k_code.shape[1]
    gen = torch.Generator(device="cuda").manual_seed(0)
    shapes = {"q": r_len, "k": k_len, "v": k_len, "g": r_len}
    t = {n: torch.randn(1, 8, m, 64, device="cuda", dtype=torch.bfloat16, generator=gen) for n, m in shapes.items()}
    q, k, v = (t[n].requires_grad_() for n in "qkv")
    # as in the model: views of one (B, L, 3 H dh) projection, rows 3 H dh apart
    joint = torch.randn(1, k_len, 3, 8, 64, device="cuda", dtype=torch.bfloat16, generator=gen).requires_grad_()
    q_view, k_view, v_view = (joint[:, :, i].transpose(1, 2) for i in range(3))
    strided = (q_view[:, :, k_len - r_len :], k_view, v_view)
    qd, kd, vd = (x.detach()[:, :, -r_len:].clone().requires_grad_() for x in (q, k, v))
    sdpa = torch.nn.functional.scaled_dot_product_attention
    dense_ms = timed(lambda: sdpa(qd, kd, vd, is_causal=True).backward(t["g"]))
    rows: list[dict[str, Any]] = [{"length": length, "variant": "sdpa_causal", "ms": dense_ms}]
    print(json.dumps(rows[-1]), flush=True)
    for name in names:
        if time.perf_counter() > deadline:
            print(f"budget spent: skipping {name} at {length}", flush=True)
            continue
        mask, block, opts = VARIANTS[name]
        row: dict[str, Any] = {"length": length, "variant": name, "block": block}
        try:
            t0 = time.perf_counter()
            bm = block_mask_for(layout, mask, block)
            torch.cuda.synchronize()
            row["block_mask_ms"] = (time.perf_counter() - t0) * 1000
            fn = torch.compile(flex_attention, dynamic="_dynamic" in name)
            kwargs = {"block_mask": bm, "kernel_options": opts or None}
            t0 = time.perf_counter()
            qkv = strided if name.endswith("_strided") else (q, k, v)
            fn(*qkv, **kwargs).backward(t["g"])
            torch.cuda.synchronize()
            row["compile_s"] = time.perf_counter() - t0
            row["ms"] = timed(lambda: fn(*qkv, **kwargs).backward(t["g"]))  # noqa: B023 - called here only
            row["fwd_ms"] = timed(lambda: fn(*qkv, **kwargs))  # noqa: B023
            row["tiles"] = [int(bm.kv_num_blocks.sum()), int(bm.full_kv_num_blocks.sum())]
        except Exception as exc:  # noqa: BLE001 - one failed variant must not lose the others
            row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[15360, 65536])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--budget-s", type=float, default=120.0)
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    args = parser.parse_args()
    torch._dynamo.config.cache_size_limit = 64
    deadline = time.perf_counter() + args.budget_s
    cfg = MuseformerConfig(vocab_size=560)
    c2c = parse_scheme("con2con", cfg.con2con, 1, cfg.con2con_self)[0]
    c2s = parse_scheme("con2sum", cfg.con2sum, 1, cfg.con2sum_self)[0]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    for length in args.lengths:
        results += probe_length(length, args.variants, deadline, c2c, c2s)
        (out / "probe.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Where a training step's host time goes (issue #3: the 15,360-token step is host-bound).

For each variant (``dense``, ``dense:compiled``, ``fc:IMPL`` with IMPL as in bench_attention.py), after
warm-up: the GPU time of a step (CUDA events), the host time of a step (until ``step()`` returns, before
the final synchronize), the synchronising calls the step makes (``torch.cuda.set_sync_debug_mode``),
kernel launches and busy GPU time per step (torch profiler), and for FC variants a cProfile of the host
work by function.

    python benchmarks/probe_host.py [--length 15360] [--variants dense fc:gather] [--cprofile 25]

Needs CUDA.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_attention import VOCAB, DenseLM, _layer_lists, fc_config, make_batch, train_step  # noqa: E402

from instruct_museformer.model import build_model  # noqa: E402
from instruct_museformer.model.planning import LayoutPlanner  # noqa: E402


def make_step(model: nn.Module, batch) -> callable:
    return lambda: train_step(model, batch)


def print_cprofile(fn, calls: int, top: int, orders: tuple[str, ...]) -> None:
    """cProfile of ``calls`` calls of ``fn()`` (synchronised at the end): ``top`` rows per sort order."""
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    prof.disable()
    text = io.StringIO()
    stats = pstats.Stats(prof, stream=text)
    for order in orders:
        stats.sort_stats(order).print_stats(top)
    print("\n".join(line for line in text.getvalue().splitlines() if line.strip()), flush=True)


def sync_sites(step) -> Counter:
    """file:line of every synchronising CUDA call one step makes (our code's frames, innermost)."""
    sites: Counter = Counter()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            step()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    for w in caught:
        if "synchroniz" in str(w.message):
            sites[f"{Path(w.filename).name}:{w.lineno}"] += 1
    return sites


def launches_and_busy(step, steps: int = 2) -> tuple[float, float]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    launches, busy_us = 0, 0.0
    for e in prof.events():
        if e.name in ("cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx", "cudaLaunchKernelExC"):
            launches += 1
        if e.device_type == torch.autograd.DeviceType.CUDA:
            busy_us += e.device_time
    return launches / steps, busy_us / 1000 / steps


def measure(variant: str, length: int, steps: int, top: int) -> None:
    """``variant`` = KIND[:IMPL][/FLAG...]; flags: ``nohost`` (the batch without its host copy: layouts
    read back from the device), ``prep`` (layouts built beforehand, as by the data loader), ``cprofile``
    (also a cProfile of three steps: ``top`` rows by own time and by cumulative time)."""
    variant, *flags = variant.split("/")
    kind, _, impl = variant.partition(":")
    compiled = impl == "compiled"
    cfg = fc_config("gather" if kind == "dense" else impl, vocab_size=VOCAB, task="language_modeling")
    cfg.attention_dropout = 0.0
    torch.manual_seed(0)
    model = (DenseLM(cfg) if kind == "dense" else build_model(cfg)).cuda().train()
    if compiled:
        for layers in _layer_lists(model):
            for layer in layers:
                layer.compile()
    batch = make_batch(length, 2, False, "cuda")
    if "nohost" in flags:
        batch.prev_output.host = None
    if "prep" in flags:  # layouts and plans built beforehand, as the data loader's workers build them
        batch.layouts = LayoutPlanner(cfg, "cuda")(batch)
    step = make_step(model, batch)
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    gpu, host = [], []
    for _ in range(steps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        t0 = time.perf_counter()
        start.record()
        step()
        host.append((time.perf_counter() - t0) * 1000)
        end.record()
        torch.cuda.synchronize()
        gpu.append(start.elapsed_time(end))
    launches, busy = launches_and_busy(step)
    sites = sync_sites(step)
    print(
        f"\n== {'/'.join([variant, *flags])} {length} tokens: step {statistics.median(gpu):.1f} ms (events), host "
        f"{statistics.median(host):.1f} ms, GPU busy {busy:.1f} ms, {launches:.0f} launches, "
        f"{sum(sites.values())} syncs: {dict(sites.most_common(8))}",
        flush=True,
    )
    if top and "cprofile" in flags:
        print_cprofile(step, 3, top, ("tottime", "cumulative"))
    del model
    torch.cuda.empty_cache()


def launch_costs(length: int) -> None:
    """Host microseconds per call, no synchronisation in between: a trivial torch op, one indexed forward
    kernel launch, the whole gathered call (forward), and forward + backward of the gathered call."""
    from bench_gather_kernels import inputs, layouts

    from instruct_museformer.model import indexed
    from instruct_museformer.model.gathered import _rows, gathered_attention, plan_for

    layout = layouts(length)["regular"]
    plan = plan_for(layout)
    q, k, v = (t.detach().requires_grad_() for t in inputs(layout))
    qf, kf, vf = _rows(q.detach()), _rows(k.detach()), _rows(v.detach())
    out = torch.empty(qf.shape[0], *qf.shape[1:], dtype=q.dtype, device="cuda")
    x = torch.zeros(16, device="cuda")
    grad = torch.ones_like(q)

    def both() -> None:
        gathered_attention(q, k, v, plan).backward(grad)
        q.grad = k.grad = v.grad = None

    calls = {
        "torch add_": lambda: x.add_(1),
        "indexed.forward": lambda: indexed.forward(qf, kf, vf, plan.k_rows, plan.runs, plan.max_q, True, out),
        "gathered fwd (no grad)": lambda: gathered_attention(q.detach(), k.detach(), v.detach(), plan),
        "gathered fwd+bwd": both,
    }
    dense = [t.detach().clone().requires_grad_() for t in (q, q, q)]

    def sdpa_both() -> None:
        out = nn.functional.scaled_dot_product_attention(*dense, is_causal=True)
        out.backward(grad)
        for t in dense:
            t.grad = None

    calls["dense SDPA fwd+bwd (same q shape)"] = sdpa_both
    for name, fn in calls.items():
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        n = 50
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        host = (time.perf_counter() - t0) / n * 1e6
        torch.cuda.synchronize()
        print(f"host per call: {name}: {host:.0f} us", flush=True)
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        both()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(10):
            both()
        torch.cuda.synchronize()
    print("gathered fwd+bwd, 20 calls, cProfile:")
    print_cprofile(both, 20, 25, ("tottime",))
    print("gathered fwd+bwd, 10 calls, host time by op:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=60))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--length", type=int, default=15360)
    parser.add_argument("--variants", nargs="+", default=["dense", "dense:compiled", "fc:gather", "fc:gather/nohost"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--cprofile", type=int, default=30, help="rows of the cProfile tables (variants /cprofile)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("needs CUDA", file=sys.stderr)
        return 2
    print(torch.cuda.get_device_name(), torch.__version__, flush=True)
    launch_costs(args.length)
    for variant in args.variants:
        measure(variant, args.length, args.steps, args.cprofile)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

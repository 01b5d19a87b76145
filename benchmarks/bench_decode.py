"""Cached decoding speed of the default-size model (width 512, 4 layers, random weights): tokens/s.

Measures the whole sampling loop of ``imf render`` / ``imf generate`` (KV-cached step, grammar mask with
the score-note constraint of ``imf render``, top-k sampling with ``imf render``'s default ordinal choice -- the
bins nearest the mean tempo and velocity -- unless ``--ordinal sample``, per-bar summary passes) for batch 1 and
batch 8, generating ``--length`` tokens per sequence from a ~1,000-token score (the grammar runs in its
unbounded mode with EOS forced at the length, so every run produces exactly that many tokens; bar k must
play the notes of the score's bar k mod 40), and prints a short table::

    python benchmarks/bench_decode.py                      # CPU (here: 2 cores)
    python benchmarks/bench_decode.py --device cuda --length 10000
    python benchmarks/bench_decode.py --checkpoint CKPT --length 10000 --batches 1 --threads 1   # a trained model

``--threads N`` sets torch's threads for the whole run, the decoding loop included (by default that loop
runs on one CPU thread, as in ``imf render``).
"""

from __future__ import annotations

import argparse
import time

import torch

from instruct_museformer.cli.render import build_parser as build_render_parser
from instruct_museformer.model import MuseformerConfig, build_model
from instruct_museformer.render.decode import DecodeRequest, SamplingOptions, decode
from instruct_museformer.render.grammar import TokenGrammar, score_bar_notes
from instruct_museformer.render.incremental import get_step_threads, set_step_threads
from instruct_museformer.render.pipeline import load_renderer
from instruct_museformer.render.windows import WindowStats, render_token_bars, split_bars
from instruct_museformer.tokens.tokenizer import Vocab, beat_table, build_tokenizer


def synthetic_score(vocab: Vocab, bars: int) -> list[int]:
    """A deadpan-like score: 4/4 bars with eight notes on eight positions (~26 tokens a bar)."""
    ids = vocab.ids
    out: list[int] = []
    for b in range(bars):
        out.append(ids["TimeSig_4/4"])
        for k in range(8):
            out += [ids[f"Position_{24 * k}"], ids[f"Pitch_{60 + (b + k) % 12}"], ids["Velocity_71"],
                    ids["Duration_0.24.48"]]
        out.append(4)
    return out + [2]


def run(
    model, grammar, table, source, batch: int, length: int, device: torch.device, seed: int, notes: bool = True,
    compile_step: bool = False, options: SamplingOptions | None = None,
) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) to sample ``length`` tokens for ``batch`` sequences."""
    bar_notes = score_bar_notes(split_bars(source), grammar) if notes else None
    if bar_notes is not None:  # enough bars for any length (a bar takes at least 4 tokens a note)
        bar_notes = bar_notes * (length // (4 * max(1, min(len(n) for n in bar_notes))) // len(bar_notes) + 2)
    requests = [DecodeRequest(source=source, notes=bar_notes) for _ in range(batch)]
    gen = torch.Generator(device=device).manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start, cpu = time.perf_counter(), time.process_time()
    results = decode(model, requests, table, grammar, options or SamplingOptions(topk=8), gen, min_len=length,
                     max_len=length, compile_step=compile_step)
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    assert all(len(r.tokens) == length + 1 for r in results), [len(r.tokens) for r in results]
    return elapsed, cpu


def run_windows(
    model, grammar, table, source: list[int], window_tokens: int, device: torch.device, seed: int, notes: bool = True,
    compile_step: bool = False, options: SamplingOptions | None = None,
) -> tuple[float, float, int, int]:
    """``imf render``'s path for a whole score (bar-aligned windows, encoder per window, score-note constraint):
    (wall seconds, process CPU seconds, performance tokens, windows)."""
    stats = WindowStats()
    gen = torch.Generator(device=device).manual_seed(seed)
    start, cpu = time.perf_counter(), time.process_time()
    out = render_token_bars(model, [source], table, grammar, options or SamplingOptions(topk=8), gen,
                            window_tokens=window_tokens, stats=stats, constrain_notes=notes, compile_step=compile_step)
    return time.perf_counter() - start, time.process_time() - cpu, len(out[0]), stats.windows


def check_exact(model, table, source, device: torch.device, steps: int = 300) -> tuple[float, float]:
    """Max relative logit error of the cached step (growing caches; static caches + CUDA graph on GPU)
    against the model's full forward on the prefix, teacher-forcing the score's own tokens for ``steps``."""
    from instruct_museformer.data.batch import collate_bar_tokens
    from instruct_museformer.render.incremental import IncrementalDecoder

    seq = torch.tensor([2] + source[:steps], device=device)
    src = collate_bar_tokens([torch.tensor(source)], table.cpu()).to(device)
    enc = model.encoder(src)
    worst = [0.0, 0.0]
    with torch.no_grad():
        full = model.decoder(collate_bar_tokens([seq.cpu()], table.cpu()).to(device), enc)[0]
        for k, graph in enumerate((False, True)):
            inc = IncrementalDecoder(model.decoder, 1, table, enc, capacity=len(seq) + 1, static=graph,
                                     max_bars=len(seq), cuda_graph=graph and device.type == "cuda")
            for t in range(len(seq)):
                logits = inc.step(seq[t : t + 1])[0]
                err = float((logits - full[t]).norm() / full[t].norm())
                worst[k] = max(worst[k], err)
    return worst[0], worst[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--length", type=int, default=None, help="tokens per sequence (default: 1000 CPU, 10000 GPU)")
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU), decoding included")
    parser.add_argument("--checkpoint", default=None,
                        help="checkpoint directory: its model (shape, weights) instead of the random default-size one")
    parser.add_argument("--score-bars", type=int, default=40, help="bars of the synthetic score (~26 tokens each)")
    parser.add_argument("--render", action="store_true",
                        help="render the whole synthetic score as imf render does (windows of the checkpoint's "
                        "training length, or 4096 tokens) instead of sampling --length tokens")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--free-notes", action="store_true", help="no score-note constraint (imf render --free-notes)")
    parser.add_argument("--compile", action="store_true",
                        help="CUDA: torch.compile the step (imf render --compile); each shape is run once untimed "
                        "first, and that first run's time (the compile included) is printed too")
    render_defaults = build_render_parser()  # the decoding imf render plays unless told otherwise
    parser.add_argument("--ordinal", choices=("sample", "median", "mean"),
                        default=render_defaults.get_default("ordinal"), help="as imf render (default: its default)")
    parser.add_argument("--ordinal-types", default=render_defaults.get_default("ordinal_types"),
                        help="as imf render (comma-separated; default: its default)")
    parser.add_argument("--check", action="store_true",
                        help="first compare cached logits with the full forward (exactness on this device)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
        set_step_threads(args.threads)
    length = args.length or (10000 if device.type == "cuda" else 1000)
    torch.manual_seed(args.seed)
    if args.checkpoint:
        renderer = load_renderer(args.checkpoint, args.device)
        model, cfg, tokenizer = renderer.model, renderer.cfg, renderer.tokenizer
        grammar, table = renderer.grammar, renderer.beat_table
    else:
        tokenizer = build_tokenizer()
        cfg = MuseformerConfig(vocab_size=len(Vocab(tokenizer).tokens), task="translation", attention_impl="reference")
        model = build_model(cfg).to(device).eval()
        grammar = TokenGrammar.for_tokenizer(tokenizer, cfg.vocab_size).to(device)
        table = beat_table(tokenizer, False).to(device)
    source = synthetic_score(Vocab(tokenizer), args.score_bars)
    options = SamplingOptions(topk=8, ordinal=args.ordinal, ordinal_types=tuple(args.ordinal_types.split(",")))
    options.check()
    run(model, grammar, table, synthetic_score(Vocab(tokenizer), 4), 1, 32, device, args.seed)  # warm-up
    if args.check:
        dynamic, static = check_exact(model, table, source, device)
        print(f"exactness vs full forward (300 steps, max relative error): growing caches {dynamic:.2e}, "
              f"static caches{' + CUDA graph' if device.type == 'cuda' else ''} {static:.2e}")
    params = sum(p.numel() for p in model.parameters())
    loop_threads = get_step_threads() or torch.get_num_threads()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"CPU, {torch.get_num_threads()} threads ({loop_threads} in the decoding loop)")
    what = args.checkpoint or "default-size model, random weights"
    print(f"cached decoding, {what} ({params / 1e6:.1f} M parameters, width {cfg.attention_embed_dim}, "
          f"{cfg.encoder_layers or cfg.num_layers}+{cfg.num_layers} layers), score {len(source)} tokens, top-k 8, "
          f"ordinal {args.ordinal} ({args.ordinal_types}), {'free notes' if args.free_notes else 'score notes'}, "
          f"on {name}, torch {torch.__version__}")
    if args.render:
        window = renderer.window_tokens if args.checkpoint else 4096
        if args.compile:
            first, _, _, _ = run_windows(model, grammar, table, source, window, device, args.seed, not args.free_notes,
                                         True, options)
            print(f"first render (compiling the step): {first:.1f} s", flush=True)
        elapsed, cpu, tokens, windows = run_windows(model, grammar, table, source, window, device, args.seed,
                                                    not args.free_notes, args.compile, options)
        print(f"rendered the {args.score_bars}-bar score in {windows} window(s) of <= {window} tokens: {tokens} tokens "
              f"in {elapsed:.1f} s (cpu {cpu:.1f} s), {tokens / elapsed:.0f} tokens/s", flush=True)
        return
    print("(cpu s = CPU time of this process; well below seconds x threads means the machine was busy)")
    print(f"{'batch':>5} {'tokens/seq':>10} {'seconds':>8} {'cpu s':>7} {'tok/s/seq':>10} {'tok/s total':>11} "
          f"{'ms/step':>8}")
    for batch in (int(b) for b in args.batches.split(",")):
        if args.compile:
            first, _ = run(model, grammar, table, source, batch, length, device, args.seed, not args.free_notes, True,
                           options)
            print(f"(batch {batch}: first run, compiling the step: {first:.1f} s)", flush=True)
        elapsed, cpu = run(model, grammar, table, source, batch, length, device, args.seed, not args.free_notes,
                           args.compile, options)
        per_seq = length / elapsed
        print(f"{batch:>5} {length:>10} {elapsed:>8.1f} {cpu:>7.1f} {per_seq:>10.0f} {per_seq * batch:>11.0f} "
              f"{1000 * elapsed / length:>8.2f}", flush=True)


if __name__ == "__main__":
    main()

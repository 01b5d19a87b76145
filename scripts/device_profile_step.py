"""Graph-replay time of the parts of one decoding step on CUDA (default-size random model, batch 1,
capacity 10,002): regular pass, masked summary pass (replayed only after a step that closes a bar),
grammar, the step graph (regular pass, grammar, sampling); then the step compiled as ``decode(...,
compile_step=True)`` compiles it. Run inside a device call after ``source scripts/device_env.sh``.
"""

import sys
import time

import torch

from instruct_museformer.data.batch import collate_bar_tokens
from instruct_museformer.model import MuseformerConfig, build_model
from instruct_museformer.render.decode import DecodeRequest, SamplingOptions, _compiled_step, _Loop
from instruct_museformer.render.grammar import GrammarState, TokenGrammar
from instruct_museformer.render.incremental import IncrementalDecoder
from instruct_museformer.tokens.tokenizer import Vocab, beat_table, build_tokenizer

sys.path.insert(0, "benchmarks")
from bench_decode import synthetic_score  # noqa: E402

dev = torch.device("cuda")
tok = build_tokenizer()
vocab = Vocab(tok)
torch.manual_seed(0)
cfg = MuseformerConfig(vocab_size=len(vocab.tokens), task="translation", attention_impl="reference")
model = build_model(cfg).to(dev).eval()
grammar = TokenGrammar.for_tokenizer(tok, cfg.vocab_size).to(dev)
table = beat_table(tok, False).to(dev)
source = synthetic_score(vocab, 40)


def timed(fn, n=200):
    g = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
        fn()
    torch.cuda.current_stream().wait_stream(s)
    with torch.cuda.graph(g):
        fn()
    g.replay()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        g.replay()
    torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - t0) / n


with torch.no_grad():
    b = 1
    enc = model.encoder(collate_bar_tokens([torch.tensor(source)] * b, table.cpu()).to(dev))
    cap = 10002
    inc = IncrementalDecoder(model.decoder, b, table, enc, capacity=cap, static=True, max_bars=cap // 2)
    tokens = torch.full((b,), 4, device=dev)
    active = torch.zeros(b, dtype=torch.bool, device=dev)
    closes = torch.ones(b, dtype=torch.bool, device=dev) & active
    reg = timed(lambda: inc._regular(tokens, active))
    summ = timed(lambda: inc._summaries_static(closes))
    state = GrammarState.start(grammar, [-1] * b, None, 1024, notes=[[[(0, 300)] * 8] * 40] * b)
    gram = timed(lambda: (state.allowed(), state.advance(tokens, active)))
    reqs = [DecodeRequest(source=source) for _ in range(b)]
    loop = _Loop(inc, state, reqs, SamplingOptions(), None, cap, False)
    loop.running.zero_()
    whole = timed(lambda: loop.step())
    print(f"batch {b}: ms per graph replay: regular {reg:.3f}, summaries {summ:.3f}, grammar {gram:.3f}, "
          f"step {whole:.3f}", flush=True)

    try:  # the inductor-fused step, captured in the same kind of graph
        compiled = _compiled_step()

        def comp() -> None:
            compiled(loop)

        t0 = time.perf_counter()
        comp()
        comp()
        torch.cuda.synchronize()
        print(f"torch.compile of the step: {time.perf_counter() - t0:.1f} s", flush=True)
        print(f"batch {b}: compiled step {timed(comp):.3f} ms per graph replay", flush=True)
    except Exception as error:
        print(f"compile failed: {type(error).__name__}: {str(error)[:300]}")

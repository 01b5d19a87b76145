"""On the GPU: windows of a fixture score rendered with the CUDA-graph step play exactly the score's notes.

Default-size random model, Mozart K. 265 variation 1 (24 bars) and the first third of it, 512-token windows
(several per score), batch 2; the same assertions as tests/render/test_render_notes.py.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "render"))

from test_render_notes import MOZART, assert_follows_score  # noqa: E402

from instruct_museformer.model import MuseformerConfig, build_model  # noqa: E402
from instruct_museformer.render.decode import SamplingOptions  # noqa: E402
from instruct_museformer.render.grammar import TokenGrammar  # noqa: E402
from instruct_museformer.render.windows import WindowStats, render_token_bars  # noqa: E402
from instruct_museformer.tokens.score import tokenize_score  # noqa: E402
from instruct_museformer.tokens.tokenizer import beat_table, build_tokenizer  # noqa: E402


def main() -> None:
    dev = torch.device("cuda")
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    cfg = MuseformerConfig(vocab_size=len(tokenizer.vocab), task="translation", attention_impl="reference")
    model = build_model(cfg).to(dev).eval()
    grammar = TokenGrammar.for_tokenizer(tokenizer, cfg.vocab_size).to(dev)
    table = beat_table(tokenizer, False).to(dev)
    score = tokenize_score(MOZART, tokenizer)
    batch = [score, score[: len(score) // 3]]
    for seed in (0, 1):
        stats = WindowStats()
        start = time.perf_counter()
        outs = render_token_bars(model, batch, table, grammar, SamplingOptions(topk=8),
                                 torch.Generator(device=dev).manual_seed(seed), window_tokens=512, context_bars=2,
                                 stats=stats)
        elapsed = time.perf_counter() - start
        for s, out in zip(batch, outs, strict=True):
            assert_follows_score(s, out, grammar, 24)
        again = render_token_bars(model, batch, table, grammar, SamplingOptions(topk=8),
                                  torch.Generator(device=dev).manual_seed(seed), window_tokens=512, context_bars=2)
        print(f"seed {seed}: {sum(len(o) for o in outs)} tokens, {stats.windows} windows in {elapsed:.1f} s: "
              f"every bar plays the score's notes; same seed, same tokens: {again == outs}")


if __name__ == "__main__":
    main()

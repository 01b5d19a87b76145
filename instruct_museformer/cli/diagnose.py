"""``imf diagnose DATA-BIN [--path CKPT] [--subset valid]``: does the model know the expression? (teacher forced)"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import UserError
from ..files import write_text_atomic


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="imf diagnose",
        description="Teacher-forced diagnosis on a data-bin split: loss per token class, and per piece the Pearson r "
        "between the performed tempo, velocity, onset offset and duration and the model's expected values "
        "(docs/model.md, 'Where the expression is lost').",
    )
    p.add_argument("data", type=Path, metavar="DATA-BIN")
    p.add_argument("--path", type=Path, default=None, metavar="CKPT",
                   help="checkpoint (default: the model shipped in the package)")
    p.add_argument("--subset", default="valid", help="data-bin split (default: valid)")
    p.add_argument("--chunk-tokens", type=int, default=4096, help="teacher-forced windows of at most this many tokens")
    p.add_argument("--max-tokens", type=int, default=16384, help="tokens per batch")
    p.add_argument("--pairs-per-piece", type=int, default=None, metavar="N",
                   help="only the first N performances of each piece (default: all)")
    p.add_argument("--history-noise", type=float, default=0.0, metavar="P",
                   help="move this share of the history's Tempo/Velocity/Duration tokens by 1 to "
                   "--history-noise-bins bins (the targets unchanged): how much the model loses when its history is "
                   "off, as in a render")
    p.add_argument("--history-noise-bins", type=int, default=2, metavar="K")
    p.add_argument("--self-feed", type=float, default=0.0, metavar="P",
                   help="replace this share of the history's Tempo/Velocity tokens by the model's own expected bins "
                   "(a first pass): how much it loses reading the history `imf render --ordinal mean` writes")
    p.add_argument("--device", default="cpu")
    p.add_argument("--attention-impl", default=None, choices=("auto", "gather", "flex", "reference"))
    p.add_argument("--out", type=Path, default=None, metavar="FILE.json", help="write the figures as JSON")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from ..data.history_noise import HistoryNoise
    from ..evaluate.diagnose import format_table, run_diagnosis
    from ..render.default_model import default_model_dir
    from ..train.self_feed import SelfFeed

    if args.chunk_tokens < 16:
        raise UserError(f"--chunk-tokens {args.chunk_tokens}: must be at least 16")
    HistoryNoise.check(args.history_noise, args.history_noise_bins)
    SelfFeed.check(args.self_feed)
    checkpoint = args.path if args.path is not None else default_model_dir()
    result = run_diagnosis(args.data, checkpoint, args.subset, chunk_tokens=args.chunk_tokens,
                           max_tokens=args.max_tokens, device=args.device, attention_impl=args.attention_impl,
                           pairs_per_piece=args.pairs_per_piece, history_noise=args.history_noise,
                           history_noise_bins=args.history_noise_bins, self_feed=args.self_feed)
    print(format_table(result))
    if args.out is not None:
        write_text_atomic(args.out, json.dumps(result, indent=2) + "\n")
    return 0

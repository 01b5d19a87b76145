"""``imf tokenize``: a corpus of score/performance pairs -> the seed's token files and dictionary."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..data.corpus import manifest_pairs, nasap_pairs, tokenize_corpus
from ..errors import UserError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imf tokenize",
        description="Tokenize score/performance pairs into data/tokens/{train,val,test}.{score,perf} "
        "and data/meta/our_dict.txt (with tokenizer.json beside it).",
        allow_abbrev=False,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--corpus", choices=["nasap"], help="a known corpus; needs --root")
    source.add_argument("--manifest", type=Path, help="CSV with columns score,performance,alignment,split "
                        "(alignment may be empty: parangonar aligns the pair)")
    source.add_argument("--show", type=Path, metavar="SCORE",
                        help="print one score's tokens bar by bar with their names and its marking counts")
    parser.add_argument("--root", type=Path, help="(n)ASAP directory or the shipped .tar.xz")
    parser.add_argument("--metadata", type=Path, help="(n)ASAP metadata CSV with an acpas_split column")
    parser.add_argument("--out", type=Path, default=Path("data/tokens"), help="token files folder")
    parser.add_argument("--meta", type=Path, default=Path("data/meta"), help="dictionary/tokenizer/report folder")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="per-pair cache (default: META/cache)")
    parser.add_argument("--limit", type=int, default=None, help="tokenize only the first N pairs (smoke tests)")
    parser.add_argument("--tokenizer", type=Path, default=None,
                        help="with --show: a tokenizer.json or checkpoint folder (default: what imf tokenize writes)")
    parser.add_argument("--bars", type=int, default=None, help="with --show: print only the first N bars")
    return parser


def _show(args: argparse.Namespace) -> int:
    from ..tokens.show import score_token_lines
    from ..tokens.tokenizer import build_tokenizer, load_tokenizer

    tokenizer = build_tokenizer() if args.tokenizer is None else load_tokenizer(args.tokenizer)
    print("\n".join(score_token_lines(args.show, tokenizer, args.bars)))
    return 0


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.show is not None:
        return _show(args)
    if args.corpus == "nasap":
        if args.root is None:
            raise UserError("--corpus nasap needs --root PATH (an (n)ASAP directory or .tar.xz)")
        pairs = nasap_pairs(args.root, args.metadata)
    else:
        pairs = manifest_pairs(args.manifest)
    if args.limit is not None:
        pairs = pairs[: args.limit]
    if not pairs:
        raise UserError("no pairs to tokenize")
    report = tokenize_corpus(pairs, args.out, args.meta, workers=args.workers, cache_dir=args.cache_dir)
    for performance, matched in report.auto_aligned.items():
        print(f"aligned with parangonar: {performance}: {matched:.1%} of the score's notes matched")
    for split in ("train", "val", "test"):
        skipped = report.skipped.get(split, {})
        reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(skipped.items())) or "none"
        print(f"{split:>5}: {report.pairs.get(split, 0)} pairs tokenized, {sum(skipped.values())} skipped ({reasons})")
    print(f"tokens per score {json.dumps(report.tokens_per_score)}, per performance "
          f"{json.dumps(report.tokens_per_performance)}, bars {json.dumps(report.bars)}")
    if report.markings:
        print(f"score markings in {report.marking_scores} scores "
              "(type: in the scores, as partitura parsed them -> tokens):")
        for kind, counts in report.markings.items():
            print(f"  {kind}: {counts['parsed']} -> {counts['tokenized']}")
    print(f"{report.cached} pairs from cache; wall time {report.wall_seconds:.1f} s; "
          f"report in {args.meta / 'tokenize_report.json'}, skipped pairs in {args.meta / 'skipped.tsv'}")
    return 0

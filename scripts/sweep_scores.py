"""Sweep public score files through the rendering path and count: rendered, refused (one-line reason), crashed.

    python scripts/sweep_scores.py FOLDER_OR_FILE... [--tiny] [--bars 4] [--per-folder N] [--jsonl OUT]

Every score goes through what ``imf render`` runs: reading (partitura / symusic), deadpan tokenization,
grammar-constrained decoding with the exact cache, and writing the performance MIDI. To sweep hundreds of
files on a CPU, ``--bars N`` decodes only the first N bars of each score (the whole score is still read
and tokenized) and ``--tiny`` decodes with a tiny random-weight checkpoint on the project tokenizer
(width 32, 2 layers) instead of the shipped model: the code path is the same, the music is noise.
"Refused" is a UserError (the CLI's one-line error, exit 2); anything else is a crash (a bug to fix).
``--per-folder N`` takes N evenly spaced files of each folder (the music21 corpus has 1,300 Palestrina
movements). Public scores to sweep: ``pip download --no-deps music21`` (its wheel ships the corpus) and
partitura's ``tests/data`` (a checkout of github.com/CPJKU/partitura).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path

from instruct_museformer.errors import UserError
from instruct_museformer.render.decode import SamplingOptions
from instruct_museformer.render.pipeline import SCORE_SUFFIXES, load_renderer, tokenize_scores, write_midi
from instruct_museformer.render.windows import render_token_bars
from instruct_museformer.tokens.score_reader import ScoreReadingWarning
from instruct_museformer.tokens.specials import BAR


def tiny_checkpoint(root: Path) -> Path:
    """A tiny random-weight translation checkpoint with the project tokenizer (as the render tests build)."""
    import torch

    from instruct_museformer.model import build_model
    from instruct_museformer.model.config import MuseformerConfig
    from instruct_museformer.tokens.tokenizer import build_tokenizer, save_tokenizer
    from instruct_museformer.train.checkpoint import CheckpointContents, save_checkpoint

    tokenizer = build_tokenizer()
    data_bin = root / "data-bin"
    data_bin.mkdir(parents=True, exist_ok=True)
    save_tokenizer(tokenizer, data_bin / "tokenizer.json")
    torch.manual_seed(0)
    cfg = MuseformerConfig(vocab_size=len(tokenizer.vocab), task="translation", num_layers=2, attention_embed_dim=32,
                           num_attention_heads=4, ffn_embed_dim=64, bar_abs_pos_embed_dim=16, beat_abs_pos_embed_dim=8,
                           dropout=0.0, attention_dropout=0.0, attention_impl="reference", block_size=16,
                           con2con="((((-1, 0),),),)", con2sum="((((None, -1),),),)", src_con2con="((((-1, 2),),),)",
                           src_con2sum="((((None, -1), (2, None)),),)")
    contents = CheckpointContents(build_model(cfg).eval(), cfg, {"beat_mask_ts": False, "tokens_per_sample": 1024}, {},
                                  data_bin=data_bin)
    return save_checkpoint(root / "checkpoints", ["checkpoint_last"], contents)[0]


def collect(paths: list[Path], per_folder: int | None) -> list[Path]:
    """Score files under the given folders (recursively) and files, sorted; N evenly spaced per folder."""
    found: list[Path] = []
    for path in paths:
        if path.is_file():
            found.append(path)
            continue
        by_folder: dict[Path, list[Path]] = {}
        for file in sorted(path.rglob("*")):
            if file.is_file() and file.suffix.lower() in SCORE_SUFFIXES:
                by_folder.setdefault(file.parent, []).append(file)
        for files in by_folder.values():
            if per_folder and len(files) > per_folder:
                files = [files[k * len(files) // per_folder] for k in range(per_folder)]
            found += files
    return found


def first_bars(tokens: list[int], bars: int) -> list[int]:
    """The score tokens up to and including the ``bars``-th Bar token (all of them when there are fewer)."""
    seen = 0
    for k, t in enumerate(tokens):
        seen += t == BAR
        if seen == bars:
            return tokens[: k + 1]
    return tokens


def sweep_one(renderer, path: Path, bars: int, out: Path) -> dict:
    start = time.perf_counter()
    record: dict = {"score": str(path)}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            tokens = tokenize_scores([path], renderer.tokenizer)[0]
            record["score_bars"] = tokens.count(BAR)
            score = first_bars(tokens, bars)
            performance = render_token_bars(renderer.model, [score], renderer.beat_table, renderer.grammar,
                                            SamplingOptions(), window_tokens=renderer.window_tokens)[0]
            record["notes"] = write_midi(performance, renderer.tokenizer, out / "sweep.mid")
            record["outcome"] = "rendered"
        except UserError as error:
            record.update(outcome="refused", reason=str(error))
        except Exception as error:  # a crash: exactly what the sweep is for
            record.update(outcome="crashed", reason=f"{type(error).__name__}: {error}",
                          where=traceback.format_exc(limit=-3))
    record["warnings"] = sorted({str(w.message) for w in caught if issubclass(w.category, ScoreReadingWarning)})
    record["seconds"] = round(time.perf_counter() - start, 2)
    return record


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("paths", nargs="+", type=Path)
    p.add_argument("--checkpoint", type=Path, default=None, help="default: the model shipped in the package")
    p.add_argument("--tiny", action="store_true", help="decode with a tiny random-weight checkpoint")
    p.add_argument("--bars", type=int, default=4, help="bars decoded per score (the whole score is read)")
    p.add_argument("--per-folder", type=int, default=None, help="at most N evenly spaced files per folder")
    p.add_argument("--jsonl", type=Path, default=None, help="one JSON record per file")
    args = p.parse_args(argv)
    files = collect(args.paths, args.per_folder)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = tiny_checkpoint(Path(tmp)) if args.tiny else args.checkpoint
        renderer = load_renderer(checkpoint, device="cpu")
        counts: Counter[str] = Counter()
        log = open(args.jsonl, "w", encoding="utf-8") if args.jsonl else None  # noqa: SIM115
        for k, path in enumerate(files, 1):
            record = sweep_one(renderer, path, args.bars, Path(tmp))
            counts[record["outcome"]] += 1
            if log:
                log.write(json.dumps(record) + "\n")
                log.flush()
            detail = record.get("reason") or f"{record.get('score_bars')} bars"
            print(f"[{k}/{len(files)}] {record['outcome']:8s} {record['seconds']:6.1f}s {path}: {detail}"
                  + (f" (warning: {record['warnings'][0]})" if record["warnings"] else ""), flush=True)
        if log:
            log.close()
    print(f"tried {len(files)}, rendered {counts['rendered']}, refused {counts['refused']}, "
          f"crashed {counts['crashed']}")
    return 1 if counts["crashed"] else 0


if __name__ == "__main__":
    sys.exit(main())

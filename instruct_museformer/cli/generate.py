"""``imf generate``: fairseq-generate for Museformer -- token lines for a data-bin split, or LM samples.

Translation (default): every score of ``--gen-subset`` is rendered (cached, grammar-constrained, bar by
bar, windows for long pieces) and printed beside its reference in fairseq's line style::

    S-<id>  <score tokens>          T-<id>  <reference performance tokens>
    H-<id>  <score>  <hypothesis>   D-<id>  <score>  <hypothesis>   P-<id>  <per-token scores>

(scores: model log-probabilities in base 2, as fairseq prints them; hypothesis = token ids without the
EOS). Language model (``--task museformer_language_modeling``): ``--num-samples`` unconditional samples
starting from EOS-as-BOS, at least ``--min-len`` tokens, EOS forced at ``--max-len-b`` (Museformer's
script: ``--min-len 1024 --max-len-b 20480``). With ``--results-path DIR`` the lines also go to
``DIR/generate-<subset>.txt`` (written whole, then renamed).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from ..errors import UserError
from ..files import write_text_atomic

TASKS = ("museformer_translation", "translation", "museformer_language_modeling", "language_modeling",
         "museformer_lm")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="imf generate", description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("data", metavar="DATA-BIN", type=Path, help="data-bin directory from imf preprocess")
    p.add_argument("--path", type=Path, required=True, metavar="CKPT", help="checkpoint directory from imf train")
    p.add_argument("--task", default="museformer_translation", choices=TASKS)
    p.add_argument("--gen-subset", default="test")
    p.add_argument("-s", "--source-lang", default="score")
    p.add_argument("-t", "--target-lang", default="perf")
    p.add_argument("--user-dir", default=None, help="accepted for fairseq compatibility; not needed")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--sampling", action="store_true", help="accepted: decoding always samples (--beam 1)")
    p.add_argument("--sampling-topk", type=int, default=8)
    p.add_argument("--sampling-topp", type=float, default=None)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--beam", type=int, default=1, help="only 1 is supported")
    p.add_argument("--nbest", type=int, default=1, help="only 1 is supported")
    p.add_argument("--batch-size", "--max-sentences", dest="batch_size", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=None, help="accepted for fairseq compatibility")
    p.add_argument("--min-len", type=int, default=1, help="LM: EOS is not allowed before this many tokens")
    p.add_argument("--max-len-a", type=float, default=0.0,
                   help="this project's tokens: accepted (the score's bars bound a rendering); other tokens: the "
                   "length limit is a * source length + b, as in fairseq-generate")
    p.add_argument("--max-len-b", type=int, default=200, help="LM: EOS is forced at this length")
    p.add_argument("--num-samples", type=int, default=1, help="LM: number of unconditional samples")
    p.add_argument("--max-samples", type=int, default=None, help="translation: only the first N samples")
    p.add_argument("--window-tokens", type=int, default=None, help="tokens per window (default: training length)")
    p.add_argument("--context-bars", type=int, default=8)
    p.add_argument("--score-constrained", action="store_true",
                   help="translation: hypothesis bar k plays exactly source bar k's notes, as imf render does "
                   "(default: off, the model chooses the notes, as fairseq-generate samples)")
    p.add_argument("--note-tolerance", type=int, default=8, metavar="POSITIONS",
                   help="with --score-constrained: how far (positions, 48 per beat) an onset may move (default 8)")
    p.add_argument("--results-path", type=Path, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--cpu", action="store_true", help="same as --device cpu")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice for the encoder, 1 for the token-by-token "
                   "decoding: faster on a shared machine, about as fast on an idle one)")
    return p


def _line_scores(logprobs: list[float]) -> tuple[float, list[float]]:
    base2 = [x / math.log(2) for x in logprobs if not math.isnan(x)]
    return (sum(base2) / len(base2) if base2 else float("nan")), base2


def _hypothesis_lines(i: int, tokens: list[int], logprobs: list[float]) -> list[str]:
    score, positional = _line_scores(logprobs)
    text = " ".join(str(t) for t in tokens if t != 2)
    return [f"H-{i}\t{score:.4f}\t{text}", f"D-{i}\t{score:.4f}\t{text}",
            f"P-{i}\t{' '.join(f'{x:.4f}' for x in positional)}"]


def _check_dictionary(data: Path, langs: list[str], vocab_size: int) -> None:
    """The data-bin's dictionaries must fit the model's vocabulary (ids are the model's token ids)."""
    from ..data.dictionary import Dictionary

    for lang in langs:
        path = data / (f"dict.{lang}.txt" if lang else "dict.txt")
        if path.is_file():
            size = len(Dictionary.load(path))
            if size != vocab_size:
                raise UserError(f"{path}: {size} entries, but the checkpoint's model has {vocab_size} tokens")


def _free_translations(renderer, sources: list[list[int]], opts, generator, args: argparse.Namespace,
                       logprobs: list[list[float]]) -> list[list[int]]:
    """Sample one performance per source, EOS once a token exists, forced at max-len-a * |source| + max-len-b."""
    from ..render.decode import DecodeRequest, decode

    max_len = max(1, int(args.max_len_a * max(map(len, sources)) + args.max_len_b))
    results = decode(renderer.model, [DecodeRequest(src) for src in sources], renderer.beat_table, renderer.grammar,
                     opts, generator, min_len=1, max_len=max_len)
    logprobs.extend(r.logprobs for r in results)
    return [r.tokens for r in results]


class _MidiWriter:
    """Hypotheses -> ``RESULTS/midi/H-<id>.mid`` through a MidiTok tokenizer (a researcher's own tokens)."""

    def __init__(self, tokenizer: object | None, results_path: Path | None) -> None:
        self.tokenizer, self.folder, self.written = tokenizer, results_path, 0
        if tokenizer is not None and results_path is None:
            print("imf generate: MidiTok tokenizer present: pass --results-path DIR to also write DIR/midi/H-<id>.mid",
                  file=sys.stderr)

    def write(self, i: int, tokens: list[int]) -> None:
        from ..render.free import write_midi

        if self.tokenizer is not None and self.folder is not None:
            write_midi(self.tokenizer, tokens, self.folder / "midi" / f"H-{i}.mid")
            self.written += 1

    def report(self) -> None:
        if self.written:
            print(f"decoded {self.written} hypotheses to MIDI with MidiTok in {self.folder / 'midi'}", file=sys.stderr)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    import torch

    from ..data.vocabulary import PROJECT
    from ..render.decode import DecodeRequest, SamplingOptions, decode
    from ..render.free import load_generator
    from ..render.incremental import set_step_threads
    from ..render.windows import render_token_bars

    if args.beam != 1 or args.nbest != 1:
        raise UserError(f"--beam {args.beam} --nbest {args.nbest}: only --beam 1 --nbest 1 (sampling) is supported")
    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads {args.threads}: must be at least 1")
        torch.set_num_threads(args.threads)
        set_step_threads(args.threads)
    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size}: must be at least 1")
    if not args.data.is_dir():
        raise UserError(f"{args.data}: no such data-bin directory")
    lm = "language_modeling" in args.task or args.task == "museformer_lm"
    renderer, layout = load_generator(args.path, "cpu" if args.cpu else args.device, args.window_tokens,
                                      task="language_modeling" if lm else "translation")
    midi = _MidiWriter(renderer.tokenizer if layout.kind != PROJECT else None, args.results_path)
    _check_dictionary(args.data, [None, args.target_lang] if lm else [args.source_lang, args.target_lang],
                      renderer.cfg.vocab_size)
    opts = SamplingOptions(args.sampling_topk, args.sampling_topp, args.temperature)
    opts.check()
    generator = torch.Generator(device=renderer.device).manual_seed(args.seed)
    lines: list[str] = []
    start = time.perf_counter()
    produced = 0

    def emit(new: list[str]) -> None:
        for line in new:
            print(line)
        lines.extend(new)

    if lm:
        if args.num_samples < 1 or args.max_len_b < 1:
            raise UserError("--num-samples and --max-len-b must be at least 1")
        for first in range(0, args.num_samples, args.batch_size):
            n = min(args.batch_size, args.num_samples - first)
            results = decode(renderer.model, [DecodeRequest(None) for _ in range(n)], renderer.beat_table,
                             renderer.grammar, opts, generator, min_len=args.min_len, max_len=args.max_len_b)
            for k, result in enumerate(results):
                emit(_hypothesis_lines(first + k, result.tokens, result.logprobs))
                midi.write(first + k, result.tokens)
                produced += len(result.tokens)
    else:
        from ..data.dataset import load_dataset

        dataset = load_dataset(args.data, args.gen_subset, task="translation", source_lang=args.source_lang,
                               target_lang=args.target_lang, bar_token=layout.bar_token)
        count = len(dataset) if args.max_samples is None else min(len(dataset), args.max_samples)
        for first in range(0, count, args.batch_size):
            samples = [dataset[i] for i in range(first, min(count, first + args.batch_size))]
            sources = [s.source.tolist() for s in samples]
            logprobs: list[list[float]] = []
            if layout.kind != PROJECT:  # no grammar to window by: fairseq-generate's length bound instead
                outs = _free_translations(renderer, sources, opts, generator, args, logprobs)
            else:
                outs = render_token_bars(renderer.model, sources, renderer.beat_table, renderer.grammar, opts,
                                         generator, window_tokens=renderer.window_tokens,
                                         context_bars=args.context_bars, logprobs=logprobs,
                                         constrain_notes=args.score_constrained, note_tolerance=args.note_tolerance,
                                         carry=renderer.carry, relative=renderer.relative)
            for sample, out, lp in zip(samples, outs, logprobs, strict=True):
                i = int(sample.id)
                emit([f"S-{i}\t{' '.join(str(t) for t in sample.source.tolist() if t != 2)}",
                      f"T-{i}\t{' '.join(str(t) for t in sample.target.tolist() if t != 2)}"])
                emit(_hypothesis_lines(i, out, lp))
                midi.write(i, out)
                produced += len(out)
    elapsed = time.perf_counter() - start
    summary = (f"Generated {produced} tokens in {elapsed:.1f}s ({produced / max(elapsed, 1e-9):.2f} tokens/s) "
               f"on {renderer.device}")
    print(summary, file=sys.stderr)
    midi.report()
    if args.results_path is not None:
        write_text_atomic(args.results_path / f"generate-{args.gen_subset}.txt", "\n".join(lines + [summary]) + "\n")
    return 0

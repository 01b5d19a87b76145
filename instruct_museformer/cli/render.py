"""``imf render``: score(s) -> expressive performance MIDI (optionally WAV and a plot)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import TextIO

from ..errors import UserError
from ..files import write_text_atomic
from ..tokens.score_reader import ScoreReadingWarning


def _comma_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="imf render",
        description="Render scores (MusicXML, MEI, kern or score MIDI) as expressive piano performances with a "
        "trained checkpoint (by default the one shipped in the package): sampled bar by bar with an exact "
        "key/value cache, constrained to well-formed tokens, with exactly the score's bars (performance bar k "
        "plays score bar k). Long scores render in bar-aligned windows.",
        allow_abbrev=False,
    )
    p.add_argument("scores", nargs="+", type=Path, metavar="SCORE", help="score files or folders of scores")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT",
                   help="output MIDI file (one score, one sample) or folder (several)")
    p.add_argument("--checkpoint", "--path", dest="checkpoint", type=Path, default=None, metavar="CKPT",
                   help="checkpoint directory (or file) from imf train (default: the model shipped in the package, "
                   "instruct_museformer/assets/default_model)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--sampling-topk", type=int, default=8, help="sample among the k most likely tokens (0: all)")
    p.add_argument("--sampling-topp", type=float, default=None, help="nucleus sampling mass (default: off)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--ordinal", choices=("sample", "median", "mean"), default="mean",
                   help="how the bins of --ordinal-types are chosen once their token type is drawn: sampled (as "
                   "fairseq), or the median / mean bin of the model's distribution (no sampling noise); default: "
                   "the mean tempo and velocity (the model's expected tempo curve and dynamics), every other token "
                   "sampled")
    p.add_argument("--ordinal-types", default="tempo,velocity", type=_comma_list,
                   help="comma-separated ordinal token types for --ordinal: tempo, velocity, duration, position "
                   "(default: tempo,velocity)")
    p.add_argument("--ordinal-temperature", type=float, default=1.0, metavar="T",
                   help="with --ordinal sample: draw the bins of --ordinal-types at this temperature, the token "
                   "type's probability unchanged (e.g. --ordinal sample --ordinal-temperature 0.5: a steadier "
                   "tempo than sampled, less steady than the default mean)")
    p.add_argument("--ordinal-feed-drawn", default="", type=_comma_list, metavar="TYPES",
                   help="some of --ordinal-types (tempo, velocity): play their picked bin, but let the model read "
                   "back a drawn one, so that its history is like a pianist's and not the flatter picked curve "
                   "(docs/model.md, section 9)")
    p.add_argument("--num-samples", type=int, default=1, help="renderings per score")
    p.add_argument("--draws", type=int, default=1, metavar="K",
                   help="play the note-wise mean of K sampled draws (timing, duration and velocity of each note; "
                   "the dynamic range of one draw): the model's expected performance, without the sampling noise "
                   "of a single draw; the K draws are decoded in one batch")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N")
    p.add_argument("--beam", type=int, default=1, help="only 1 (sampling) is supported")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice for the encoder, 1 for the token-by-token "
                   "decoding: faster on a shared machine, about as fast on an idle one)")
    p.add_argument("--compile", action="store_true",
                   help="CUDA: torch.compile the decoding step (20-30 s once per process, then a step about twice "
                   "as fast: worth it for long pieces or many scores, not for one short piece)")
    p.add_argument("--window-tokens", type=int, default=None,
                   help="decoder/encoder tokens per window (default: the checkpoint's training length)")
    p.add_argument("--context-bars", type=int, default=8, help="rendered bars carried into the next window")
    p.add_argument("--free-notes", action="store_true",
                   help="let the model choose the notes (default: performance bar k plays exactly score bar k's "
                   "notes, onsets within --note-tolerance of the score's)")
    p.add_argument("--note-tolerance", type=int, default=8, metavar="POSITIONS",
                   help="how far (in positions, 48 per beat) a note's onset may move from its score position "
                   "(default: 8, a sixth of a beat)")
    p.add_argument("--wav", type=Path, default=None, metavar="FILE",
                   help="also synthesise a WAV with FluidSynth (a folder when there are several outputs)")
    p.add_argument("--plot", type=Path, default=None, metavar="FILE.png",
                   help="piano roll of score vs performance with tempo and velocity (a folder for several)")
    p.add_argument("--report", type=Path, default=None, metavar="FILE.json",
                   help="write the per-output score-match figures as JSON")
    p.add_argument("--progress-every", type=float, default=5.0, metavar="SECONDS",
                   help="a progress line on stderr this often (bars done of total, tokens/s), also when stderr "
                   "is a file or a pipe (default: 5; 0: none)")
    return p


def main(argv: list[str]) -> int:
    with warnings.catch_warnings():  # restores the usual format when main returns (tests call it in-process)
        usual = warnings.showwarning

        def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: TextIO | None = None, line: str | None = None) -> None:
            """Score-reading warnings (e.g. repeats played as written) as one line, not Python's two."""
            if issubclass(category, ScoreReadingWarning):
                print(f"imf render: warning: {message}", file=sys.stderr if file is None else file, flush=True)
            else:
                usual(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        return _main(argv)


def _score_names(scores: list[Path]) -> dict[Path, str]:
    """Output base names: the score's stem, or -- when stems collide, as with (n)ASAP's ``xml_score`` --
    its folders below the common ancestor joined by ``__`` (``Bach__Prelude__bwv_854``, the naming
    ``imf evaluate`` expects for renderings)."""
    unique = list(dict.fromkeys(p.resolve() for p in scores))
    stems = [p.stem for p in unique]
    if len(set(stems)) == len(stems):
        return {p: p.stem for p in unique}
    root = Path(os.path.commonpath([str(p.parent) for p in unique]))
    names = {}
    for p in unique:
        parts = p.parent.relative_to(root).parts
        names[p] = "__".join(parts) if parts else p.stem
    if len(set(names.values())) != len(names):  # same folder twice: keep the stems too
        names = {p: "__".join((*p.parent.relative_to(root).parts, p.stem)) for p in unique}
    return names


def _names(renderings: list, single: bool, output: Path) -> list[Path]:
    if single:
        if output.is_dir():
            return [output / f"{renderings[0].score.stem}.mid"]
        return [output]
    if output.suffix.lower() in (".mid", ".midi"):
        raise UserError(f"-o {output}: several outputs need a folder, not a MIDI file name")
    base = _score_names([r.score for r in renderings])
    several = len({r.sample for r in renderings}) > 1
    return [output / f"{base[r.score.resolve()]}{f'.sample{r.sample + 1}' if several else ''}.mid" for r in renderings]


def _side_path(option: Path | None, single: bool, midi: Path, suffix: str) -> Path | None:
    if option is None:
        return None
    return option if single else option / (midi.stem + suffix)


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from ..render.decode import SamplingOptions
    from ..render.incremental import set_step_threads
    from ..render.pipeline import (
        collect_scores,
        fluidsynth_available,
        load_renderer,
        render_files,
        write_plot,
        write_rendering,
        write_wav,
    )
    from ..render.windows import WindowStats

    if args.beam != 1:
        raise UserError(f"--beam {args.beam}: only --beam 1 (sampling) is supported")
    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads {args.threads}: must be at least 1")
        import torch

        torch.set_num_threads(args.threads)
        set_step_threads(args.threads)
    if args.window_tokens is not None and args.window_tokens < 16:
        raise UserError(f"--window-tokens {args.window_tokens}: must be at least 16")
    if args.context_bars < 0:
        raise UserError(f"--context-bars {args.context_bars}: must be >= 0")
    if args.note_tolerance < 0:
        raise UserError(f"--note-tolerance {args.note_tolerance}: must be >= 0")
    if args.progress_every < 0:
        raise UserError(f"--progress-every {args.progress_every}: must be >= 0 (0: no progress lines)")
    if args.wav is not None and (missing := fluidsynth_available()):
        raise UserError(f"--wav {args.wav}: {missing}")
    scores = collect_scores(args.scores)
    single = len(scores) == 1 and args.num_samples == 1 and not (len(args.scores) == 1 and args.scores[0].is_dir())
    renderer = load_renderer(args.checkpoint, args.device, args.window_tokens)
    if args.compile and renderer.device.type != "cuda":
        print(f"--compile: only on CUDA; decoding on {renderer.device.type} as usual", file=sys.stderr)
    opts = SamplingOptions(args.sampling_topk, args.sampling_topp, args.temperature, args.ordinal, args.ordinal_types,
                           args.ordinal_temperature, args.ordinal_feed_drawn)
    opts.check()
    stats = WindowStats()
    start = time.perf_counter()
    renderings = render_files(renderer, scores, opts, args.num_samples, args.seed, args.context_bars, stats,
                              free_notes=args.free_notes, note_tolerance=args.note_tolerance,
                              compile_step=args.compile, progress_every=args.progress_every or None,
                              draws=args.draws)
    elapsed = time.perf_counter() - start
    names = _names(renderings, single, args.output)
    if not single:
        args.output.mkdir(parents=True, exist_ok=True)
    report = []
    for r, midi in zip(renderings, names, strict=True):
        notes = write_rendering(r, renderer.tokenizer, midi)
        wav = _side_path(args.wav, single, midi, ".wav")
        if wav is not None:
            write_wav(midi, wav)
        png = _side_path(args.plot, single, midi, ".png")
        if png is not None:
            write_plot(r.score_tokens, r.tokens, renderer.tokenizer, png, f"{r.score.name} -> {midi.name}", r.merged)
        m = r.match
        print(f"{midi}: {m.bars_performance} bars (score {m.bars_score}), {notes} notes, "
              f"score notes present {100 * m.fraction_present:.1f}%, extra notes {m.extra_notes}")
        report.append({"score": str(r.score), "output": str(midi), "sample": r.sample, "tokens": len(r.tokens),
                       **m.as_dict()})
    tokens = sum(len(r.tokens) for r in renderings) * args.draws  # about: the draws differ a little in length
    print(f"rendered {len(renderings)} performance(s), {tokens} tokens in {elapsed:.1f} s "
          f"({tokens / max(elapsed, 1e-9):.0f} tokens/s, {stats.windows} window(s)) on {renderer.device}",
          file=sys.stderr)
    if args.report is not None:
        write_text_atomic(args.report, json.dumps(report, indent=2))
    return 0

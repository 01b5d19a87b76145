"""Score files -> expressive performance MIDI (and WAV, plot): what ``imf render`` runs.

A checkpoint directory from ``imf train`` is self-contained (config, weights, tokenizer), so rendering
needs nothing else; without one, the model shipped in the package is used (``render.default_model``).
Every score is tokenized before any decoding starts, so a bad file fails early and no output is written;
every output goes to a temporary file in its folder and is renamed at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.carried_markings import MarkingsInForce
from ..data.mark_relative import MarkRelativeTempo
from ..data.views import sample_views
from ..errors import UserError
from ..model.config import MuseformerConfig
from ..tokens.specials import BAR
from .decode import SamplingOptions
from .grammar import DEFAULT_NOTE_TOLERANCE, TokenGrammar
from .progress import RenderProgress
from .windows import ScoreMatch, WindowStats, render_token_bars, score_match

SCORE_SUFFIXES = (".musicxml", ".mxl", ".xml", ".mei", ".krn", ".kern", ".mid", ".midi")
SOUNDFONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
VOCAB_PADDING_SLACK = 64  # a dictionary padded by --padding-factor may exceed the tokenizer by this much


@dataclass
class Renderer:
    """A loaded checkpoint, ready to decode."""

    model: nn.Module
    cfg: MuseformerConfig
    tokenizer: Any
    beat_table: torch.Tensor
    grammar: TokenGrammar
    device: torch.device
    window_tokens: int
    checkpoint: Path
    carry: MarkingsInForce | None = None  # the model was trained with --carry-markings
    relative: MarkRelativeTempo | None = None  # ... with --tempo-relative-to-mark


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name}: not a device name (auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine")
    return device


def _checkpoint_tokenizer(directory: Path, metadata: dict[str, Any]) -> Any:
    """This project's tokenizer of a checkpoint; any other (or none) is a one-line error naming imf generate."""
    from ..data.vocabulary import is_project_tokenizer, load_miditok
    from ..tokens.tokenizer import load_tokenizer

    path = directory / "tokenizer.json"
    with tempfile.TemporaryDirectory() as tmp:
        if not path.is_file() and isinstance(metadata.get("tokenizer"), dict):
            path = Path(tmp) / "tokenizer.json"
            path.write_text(json.dumps(metadata["tokenizer"]), encoding="utf-8")
        if not path.is_file():
            raise UserError(f"{directory}: trained without a tokenizer (bar structure only), which imf render cannot "
                            "drive; sample it with imf generate DATA-BIN --path CHECKPOINT")
        foreign = load_miditok(path)
        if not is_project_tokenizer(foreign):
            raise UserError(f"{directory}: trained with a MidiTok {type(foreign).__name__} tokenizer that imf render "
                            "cannot drive (it needs this project's); use imf generate DATA-BIN --path CHECKPOINT, "
                            "which also decodes to MIDI")
        return load_tokenizer(path)


def load_renderer(
    checkpoint: Path | str | None = None,
    device: str = "auto",
    window_tokens: int | None = None,
    task: str = "translation",
) -> Renderer:
    """Load a checkpoint (file or directory; None: the model shipped in the package) for decoding;
    UserError when it is missing or does not fit ``task``."""
    from ..data.batch import BEAT_INHERIT
    from ..tokens.tokenizer import beat_table
    from ..train.checkpoint import load_checkpoint_model, resolve_checkpoint
    from .default_model import default_model_dir

    checkpoint = default_model_dir() if checkpoint is None else Path(checkpoint)
    if not checkpoint.exists():
        raise UserError(f"{checkpoint}: checkpoint not found")
    directory = resolve_checkpoint(checkpoint)
    # the encoder runs once per window at a new length: FlexAttention would compile (tens of seconds) for
    # each, the exact blocked reference path needs no compilation (the decoder steps have their own attention)
    model, cfg, metadata = load_checkpoint_model(directory, attention_impl="reference")
    if cfg.task != task:
        hint = "imf generate --task museformer_language_modeling" if cfg.task == "language_modeling" else "imf render"
        raise UserError(f"{directory}: a {cfg.task} checkpoint, not {task} (use {hint})")
    tokenizer = _checkpoint_tokenizer(directory, metadata)
    n = len(tokenizer.vocab)
    if not n <= cfg.vocab_size < n + VOCAB_PADDING_SLACK:
        raise UserError(
            f"{directory}: the model's vocabulary ({cfg.vocab_size} tokens) does not match its tokenizer "
            f"({n} tokens)"
        )
    args = metadata.get("args") or {}
    table = beat_table(tokenizer, beat_mask_ts=bool(args.get("beat_mask_ts", False)))
    if cfg.vocab_size > n:
        table = torch.cat([table, torch.full((cfg.vocab_size - n,), BEAT_INHERIT, dtype=torch.long)])
    dev = resolve_device(device)
    model = model.to(dev).eval()
    if window_tokens is None:
        window_tokens = int(args.get("truncate_train") or args.get("tokens_per_sample") or 4096)
    grammar = TokenGrammar.for_tokenizer(tokenizer, cfg.vocab_size).to(dev)
    from ..tokens.tokenizer import vocab_tokens

    views = sample_views(args, vocab_tokens(tokenizer), cfg.vocab_size)
    return Renderer(model, cfg, tokenizer, table.to(dev), grammar, dev, window_tokens, directory, views.carry,
                    views.relative)


def collect_scores(paths: Sequence[Path | str]) -> list[Path]:
    """Score files from files and folders (a folder contributes its score files, sorted)."""
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SCORE_SUFFIXES)
            if not found:
                raise UserError(f"{path}: no score files in this folder ({', '.join(SCORE_SUFFIXES)})")
            out += found
        elif path.is_file():
            if path.suffix.lower() not in SCORE_SUFFIXES:
                raise UserError(f"{path}: unsupported score format '{path.suffix}' (use MusicXML, MEI, kern or MIDI)")
            out.append(path)
        else:
            raise UserError(f"{path}: file not found")
    return out


def tokenize_scores(paths: Sequence[Path], tokenizer: Any, progress: RenderProgress | None = None) -> list[list[int]]:
    """Deadpan score tokens of each file; UserError names the file (unreadable, empty, no measures)."""
    from ..tokens.score import tokenize_score

    out = []
    for path in paths:
        try:
            with progress.reading(path) if progress is not None else contextlib.nullcontext():
                ids = tokenize_score(path, tokenizer)
        except UserError:
            raise
        except Exception as error:  # a parser failing in a way the tokenizer did not foresee
            raise UserError(f"{path}: cannot read score ({type(error).__name__}: {error})") from None
        if BAR not in ids:
            raise UserError(f"{path}: the score has no measures")
        out.append(ids)
    return out


@dataclass
class Rendering:
    """One output: its tokens (with ``draws`` > 1, those of the draw nearest the mean) and, when several draws
    were merged, their note-wise mean (``render.consensus``)."""

    score: Path
    sample: int
    score_tokens: list[int]
    tokens: list[int]
    match: ScoreMatch
    merged: Any = None  # render.consensus.Merged, or None: the tokens are the performance
    draws: int = 1


def render_files(
    renderer: Renderer,
    scores: Sequence[Path],
    opts: SamplingOptions,
    num_samples: int = 1,
    seed: int = 1,
    context_bars: int = 8,
    stats: WindowStats | None = None,
    free_notes: bool = False,
    note_tolerance: int = DEFAULT_NOTE_TOLERANCE,
    compile_step: bool = False,
    progress_every: float | None = None,
    draws: int = 1,
) -> list[Rendering]:
    """Render every score ``num_samples`` times in one batch (windows as needed).

    ``draws`` > 1: each output is the note-wise mean of that many sampled draws (``render.consensus``), all
    decoded in the same batch.

    ``progress_every`` (seconds): write progress lines to stderr (reading each score; then bars done of
    the total and tokens/s that often), whether or not it is a terminal.

    Performance bar k plays exactly score bar k's notes, each within ``note_tolerance`` positions (48 per
    beat) of its score onset, unless ``free_notes`` lets the model choose the notes.
    """
    if num_samples < 1:
        raise UserError(f"--num-samples {num_samples}: must be at least 1")
    if draws < 1:
        raise UserError(f"--draws {draws}: must be at least 1")
    opts.check()
    progress = RenderProgress(0, every=progress_every) if progress_every is not None else None
    token_lists = tokenize_scores(scores, renderer.tokenizer, progress)
    jobs = [(i, k) for i in range(len(scores)) for k in range(num_samples) for _ in range(draws)]
    if progress is not None:
        progress.total_bars = sum(token_lists[i].count(BAR) for i, _ in jobs)
        progress.note(f"rendering {progress.total_bars} bars")
    generator = torch.Generator(device=renderer.device).manual_seed(seed)
    outputs = render_token_bars(
        renderer.model, [token_lists[i] for i, _ in jobs], renderer.beat_table, renderer.grammar, opts,
        generator, window_tokens=renderer.window_tokens, context_bars=context_bars, stats=stats,
        constrain_notes=not free_notes, note_tolerance=note_tolerance, compile_step=compile_step,
        progress=progress, carry=renderer.carry, relative=renderer.relative,
    )
    if draws == 1:
        return [
            Rendering(scores[i], k, token_lists[i], out, score_match(token_lists[i], out, renderer.grammar))
            for (i, k), out in zip(jobs, outputs, strict=True)
        ]
    from ..tokens.tokenizer import Vocab
    from .consensus import merge_renderings

    vocab = Vocab(renderer.tokenizer)
    renderings = []
    for start in range(0, len(jobs), draws):
        (i, k), group = jobs[start], outputs[start : start + draws]
        merged = merge_renderings(group, vocab)
        nearest = group[merged.nearest]
        renderings.append(Rendering(scores[i], k, token_lists[i], nearest,
                                    score_match(token_lists[i], nearest, renderer.grammar), merged, draws))
    return renderings


# -- outputs ------------------------------------------------------------------------------------------


def _atomic_target(path: Path) -> Path:
    """A temporary sibling of ``path`` with the permissions a plain new file gets (mkstemp makes 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return Path(tmp)


def write_midi(tokens: Sequence[int], tokenizer: Any, path: Path) -> int:
    """Performance MIDI (notes, sustain pedal, tempo map) written atomically; returns the note count."""
    from ..tokens.performance import decode_performance

    return write_performance(decode_performance(tokens, tokenizer), path)


def write_rendering(rendering: Rendering, tokenizer: Any, path: Path) -> int:
    """A rendering's MIDI: the merged draws when there are several, else its tokens."""
    if rendering.merged is not None:
        return write_performance(rendering.merged.score, path)
    return write_midi(rendering.tokens, tokenizer, path)


def write_performance(score: Any, path: Path) -> int:
    """A symusic Score (ticks or seconds) as MIDI, written atomically; returns the note count."""
    tmp = _atomic_target(path)
    try:
        score.dump_midi(str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return sum(len(t.notes) for t in score.tracks)


def fluidsynth_available() -> str | None:
    """None when FluidSynth and the GM soundfont are installed, else what is missing."""
    if shutil.which("fluidsynth") is None:
        return "fluidsynth is not installed (Debian: apt-get install fluidsynth fluid-soundfont-gm)"
    if not SOUNDFONT.is_file():
        return f"the soundfont {SOUNDFONT} is missing (Debian: apt-get install fluid-soundfont-gm)"
    return None


def write_wav(midi: Path, path: Path) -> None:
    """Synthesise a MIDI file with FluidSynth and the General MIDI piano (44.1 kHz WAV), atomically."""
    missing = fluidsynth_available()
    if missing:
        raise UserError(f"--wav {path}: {missing}")
    tmp = _atomic_target(path)
    try:
        cmd = ["fluidsynth", "-ni", "-q", "-g", "0.8", "-r", "44100", "-F", str(tmp), str(SOUNDFONT), str(midi)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
        if done.returncode != 0 or tmp.stat().st_size == 0:
            raise UserError(f"--wav {path}: fluidsynth failed ({done.stderr.strip()[:200]})")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_plot(score_tokens: Sequence[int], tokens: Sequence[int], tokenizer: Any, path: Path, title: str,
               merged: Any = None) -> None:
    """Piano roll of the score (deadpan) against the performance, with tempo and velocity curves (PNG);
    ``merged`` (``render.consensus.Merged``) is plotted instead of the tokens when given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..tokens.performance import decode_performance

    def notes(ids: Sequence[int]) -> tuple[list, Any]:
        score = decode_performance(ids, tokenizer).to("second")
        return [n for t in score.tracks for n in t.notes], score

    s_notes, _ = notes(score_tokens)
    if merged is None:
        p_notes, p_score = notes(tokens)
        tempo_t, tempo_q = [t.time for t in p_score.tempos], [t.qpm for t in p_score.tempos]
    else:
        from ..tokens.tokenizer import Vocab
        from .consensus import onset_tempo

        p_notes = list(merged.score.tracks[0].notes)
        tempo_t, tempo_q = onset_tempo(score_tokens, Vocab(tokenizer), merged.keys, merged.onset)
    fig, axes = plt.subplots(3, 1, figsize=(12, 8), sharex=True, gridspec_kw={"height_ratios": [3, 1, 1]})
    roll, tempo_ax, vel_ax = axes
    roll.barh([n.pitch for n in s_notes], [n.duration for n in s_notes], left=[n.time for n in s_notes],
              height=0.8, color="0.75", label="score (deadpan)")
    roll.barh([n.pitch for n in p_notes], [n.duration for n in p_notes], left=[n.time for n in p_notes],
              height=0.5, color=plt.cm.viridis([n.velocity / 127 for n in p_notes]), label="performance")
    roll.set_ylabel("pitch")
    roll.legend(loc="upper right")
    roll.set_title(title)
    tempo_ax.step(tempo_t, tempo_q, where="post")
    tempo_ax.set_ylabel("tempo (qpm)")
    vel_ax.plot([n.time for n in p_notes], [n.velocity for n in p_notes], ".", markersize=3)
    vel_ax.set_ylabel("velocity")
    vel_ax.set_xlabel("time (s)")
    fig.tight_layout()
    tmp = _atomic_target(path)
    try:
        fig.savefig(str(tmp), format="png", dpi=100)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)

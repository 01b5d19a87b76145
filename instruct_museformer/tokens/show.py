"""A score's tokens bar by bar, with their names and its marking counts: what ``imf tokenize --show`` prints.

It lets a user check that a marking was read (and where it went) before training or rendering with it.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import miditok

from . import specials
from .score import encode_score, load_score, score_grid
from .tokenizer import Vocab, markings_version


def score_token_lines(path: Path, tokenizer: miditok.REMI, max_bars: int | None = None) -> list[str]:
    """Lines: a header, then per bar its TimeSig and one line per Position, then the marking counts.

    Raises TokenizationError (a UserError naming the file) for a score that cannot be read.
    """
    data = load_score(Path(path))
    vocab = Vocab(tokenizer)
    tokenized: Counter = Counter()
    ids = encode_score(data, score_grid(data, vocab), tokenized)
    names = vocab.tokens
    bars = _split_bars(ids)
    lines = [f"{path}: {len(bars)} bars, {len(ids)} tokens (tokenizer: {len(names)} tokens, "
             f"score_markings {markings_version(tokenizer) or 'off'})"]
    for number, bar in enumerate(bars[:max_bars] if max_bars else bars, start=1):
        lines.append(f"bar {number}: {names[bar[0]] if bar else ''}")
        current: list[str] = []
        for token_id in bar[1:]:
            name = names[token_id]
            if name.startswith("Position_") and current:
                lines.append("    " + " ".join(current))
                current = []
            current.append(name)
        if current:
            lines.append("    " + " ".join(current))
    if max_bars and len(bars) > max_bars:
        lines.append(f"... {len(bars) - max_bars} more bars")
    lines += _marking_lines(data.markings, tokenized, vocab.score_markings)
    return lines


def _split_bars(ids: list[int]) -> list[list[int]]:
    bars, current = [], []
    for token_id in ids:
        if token_id == specials.BAR:
            bars.append(current)
            current = []
        else:
            current.append(token_id)
    return bars


def _marking_lines(markings, tokenized: Counter, enabled: bool) -> list[str]:
    if markings is None:
        return ["markings: none (a MIDI score carries no markings)"]
    if not markings.parsed:
        return ["markings: none found"]
    lines = ["markings (type: in the score, as partitura parsed it -> tokens)" + ("" if enabled else
             "; this tokenizer has no marking tokens (score_markings off)")]
    for kind in sorted(set(markings.parsed) | set(tokenized)):
        lines.append(f"  {kind}: {markings.parsed[kind]} -> {tokenized[kind]}")
    return lines

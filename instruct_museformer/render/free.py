"""Generation for vocabularies this project's grammar cannot read: another MidiTok tokenizer, or none.

``imf render`` needs this project's tokenizer (its grammar places every token in a bar of the score).
A model trained on a researcher's own tokens is sampled as fairseq-generate samples: any content token
may follow any other, PAD/BOS/unk and the dictionary's padding ids never; EOS once ``min_len`` tokens
exist, forced at ``max_len``. The bar token (``--eob-token`` of training) still drives Museformer's bar
structure, and the beats are those training used (:mod:`..data.vocabulary`). With a MidiTok tokenizer
the generated sequences are also decoded to MIDI by MidiTok.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data.vocabulary import (
    MIDITOK,
    PROJECT,
    TOKENIZER_FILE,
    TokenLayout,
    load_miditok,
    token_layout,
    tokenizer_tokens,
)
from ..errors import UserError
from ..tokens.specials import EOS, NUM_SPECIALS, PAD


class FreeGrammar:
    """The allowed tokens of a vocabulary without grammar: content ids (below ``content_size``) and EOS."""

    def __init__(self, vocab_size: int, content_size: int, bar_token: int) -> None:
        self.vocab_size, self.bar_token = vocab_size, bar_token
        self.content = torch.zeros(vocab_size, dtype=torch.bool)
        self.content[NUM_SPECIALS:content_size] = True

    @property
    def state_type(self) -> type[FreeState]:
        return FreeState

    def to(self, device: torch.device) -> FreeGrammar:
        self.content = self.content.to(device)
        return self


@dataclass
class FreeState:
    """Per sequence: tokens emitted, bars closed, done; the subset of GrammarState that decoding reads."""

    grammar: FreeGrammar
    length: torch.Tensor
    bars_done: torch.Tensor
    done: torch.Tensor
    target_bars: torch.Tensor
    min_len: int = 0
    max_len: int | None = None

    @classmethod
    def start(cls, grammar: FreeGrammar, target_bars: Sequence[int], *args: Any, min_len: int = 0,
              max_len: int | None = None, **kwargs: Any) -> FreeState:
        """As GrammarState.start; bar counts and score notes are not constrained (``target_bars`` only stops)."""
        dev = grammar.content.device
        b = len(target_bars)
        zeros = torch.zeros(b, dtype=torch.long, device=dev)
        return cls(grammar, zeros.clone(), zeros.clone(), torch.zeros(b, dtype=torch.bool, device=dev),
                   torch.tensor(list(target_bars), dtype=torch.long, device=dev), min_len, max_len)

    def allowed(self) -> torch.Tensor:
        mask = self.grammar.content[None, :].expand(len(self.length), -1).clone()
        eos = self.length >= self.min_len
        if self.max_len is not None:
            forced = self.length >= self.max_len
            mask &= ~forced[:, None]
            eos = eos | forced
        mask[:, EOS] = eos
        mask &= ~self.done[:, None]
        mask[:, PAD] = self.done
        return mask

    def advance(self, tokens: torch.Tensor, active: torch.Tensor | None = None) -> None:
        tokens = tokens.to(self.length.device)
        move = ~self.done if active is None else (~self.done & active.to(self.done.device))
        self.bars_done.add_((move & (tokens == self.grammar.bar_token)).long())
        self.length.add_(move.long())
        self.done.copy_(self.done | (move & (tokens == EOS)))


def checkpoint_layout(directory: Path, metadata: dict[str, Any], vocab_size: int) -> TokenLayout:
    """The bar token and beats a checkpoint was trained with (its tokenizer.json copy, dictionaries, flags)."""
    args = metadata.get("args") or {}
    dicts = sorted(directory.glob("dict*.txt"))
    flags = {"beat_mask_ts": bool(args.get("beat_mask_ts", False)), "eob_token": args.get("eob_token")}
    tokenizer = directory / TOKENIZER_FILE
    if tokenizer.is_file() or not isinstance(metadata.get("tokenizer"), dict):
        return token_layout(tokenizer if tokenizer.is_file() else None, dicts, vocab_size, **flags)
    with tempfile.TemporaryDirectory() as tmp:  # only config.json holds the tokenizer
        copy = Path(tmp) / TOKENIZER_FILE
        copy.write_text(json.dumps(metadata["tokenizer"]), encoding="utf-8")
        return token_layout(copy, dicts, vocab_size, **flags)


def free_grammar(layout: TokenLayout) -> FreeGrammar:
    content = layout.vocab_size
    if layout.tokenizer_path is not None:
        content = min(content, len(tokenizer_tokens(load_miditok(layout.tokenizer_path))))
    return FreeGrammar(layout.vocab_size, content, layout.bar_token)


def midi_tokenizer(layout: TokenLayout) -> Any | None:
    """The MidiTok tokenizer that decodes generated sequences to MIDI (None: the layout has none)."""
    return load_miditok(layout.tokenizer_path) if layout.kind == MIDITOK and layout.tokenizer_path else None


def write_midi(tokenizer: Any, tokens: Sequence[int], path: Path) -> None:
    """Decode one generated sequence (specials dropped) to a MIDI file with MidiTok, atomically."""
    ids = [int(t) for t in tokens if int(t) >= NUM_SPECIALS]
    try:
        score = tokenizer.decode(ids if tokenizer.config.one_token_stream_for_programs else [ids])
    except Exception as error:  # MidiTok rejects some sequences
        raise UserError(f"{path}: MidiTok could not decode the sequence ({type(error).__name__}: {error})") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    score.dump_midi(str(tmp))
    tmp.replace(path)


def load_generator(checkpoint: Path, device: str, window_tokens: int | None, task: str) -> tuple[Any, TokenLayout]:
    """(Renderer, layout) for imf generate: this project's renderer for its own tokenizer, else a free one."""
    from ..train.checkpoint import load_checkpoint_model, read_config, resolve_checkpoint
    from .pipeline import Renderer, load_renderer, resolve_device

    if not Path(checkpoint).exists():
        raise UserError(f"{checkpoint}: checkpoint not found")
    directory = resolve_checkpoint(Path(checkpoint))
    metadata = read_config(directory)
    vocab_size = int((metadata.get("model") or {}).get("vocab_size", 0))
    layout = checkpoint_layout(directory, metadata, vocab_size)
    if layout.kind == PROJECT:
        return load_renderer(directory, device, window_tokens, task=task), layout
    model, cfg, metadata = load_checkpoint_model(directory, attention_impl="reference")
    if cfg.task != task:
        raise UserError(f"{directory}: a {cfg.task} checkpoint, not {task} (imf generate --task)")
    dev = resolve_device(device)
    args = metadata.get("args") or {}
    window = window_tokens or int(args.get("truncate_train") or args.get("tokens_per_sample") or 4096)
    renderer = Renderer(model.to(dev).eval(), cfg, midi_tokenizer(layout), layout.beat_table.to(dev),
                        free_grammar(layout).to(dev), dev, window, directory)
    return renderer, layout

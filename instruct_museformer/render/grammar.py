"""The grammar of our REMI bars, as per-step masks over the vocabulary, so decoding never fails.

A bar, as the tokenizer writes it (``tokens/remi.py``; Bar *closes* the bar)::

    TimeSig  { Position [Tempo] [Pedal|PedalOff]{0,2} (Pitch Velocity Duration)* }*  Bar

Rules enforced at every step (vectorised over the batch, no host round trip per sequence):

* a bar starts with a TimeSig -- the score bar's own one when rendering, so performance bar k has
  score bar k's length; Positions inside a bar strictly increase and stay inside the bar;
* a Position is followed by at least one event (Tempo, pedal or note); Tempo only right after Position;
* a note is Pitch -> Velocity -> Duration;
* Bar may close the bar after a TimeSig, Tempo, pedal or Duration (never inside a note);
* rendering: after as many Bars as the score has bars, EOS and nothing else; EOS nowhere else.
  Language modelling: EOS after a Bar once ``min_len`` tokens exist; EOS forced at ``max_len``;
* a bar longer than its token budget may only finish its current note/position and close.

Token types come from the vocabulary strings (``Vocab.tokens``); ids beyond the tokenizer's vocabulary
(a dictionary padded by ``--padding-factor``) and the specials other than EOS are never allowed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..tokens.specials import EOS, PAD

(T_SPECIAL, T_EOS, T_BAR, T_TIMESIG, T_POSITION, T_TEMPO, T_PEDAL, T_PITCH, T_VELOCITY, T_DURATION,
 T_OTHER) = range(11)
NUM_TYPES = 11
_KINDS = {"Bar": T_BAR, "TimeSig": T_TIMESIG, "Position": T_POSITION, "Tempo": T_TEMPO, "Pedal": T_PEDAL,
          "PedalOff": T_PEDAL, "Pitch": T_PITCH, "Velocity": T_VELOCITY, "Duration": T_DURATION}
_FOLLOW = {
    T_BAR: (T_TIMESIG,),
    T_TIMESIG: (T_POSITION, T_BAR),
    T_POSITION: (T_TEMPO, T_PEDAL, T_PITCH),
    T_TEMPO: (T_PEDAL, T_PITCH, T_POSITION, T_BAR),
    T_PEDAL: (T_PEDAL, T_PITCH, T_POSITION, T_BAR),
    T_PITCH: (T_VELOCITY,),
    T_VELOCITY: (T_DURATION,),
    T_DURATION: (T_PITCH, T_POSITION, T_BAR),
}
MAX_PEDALS_PER_POSITION = 2


class TokenGrammar:
    """Per-vocabulary tables: token type, Position value, positions per bar of each TimeSig."""

    def __init__(self, tokens: Sequence[str], vocab_size: int, positions_per_beat: int) -> None:
        if vocab_size < len(tokens):
            raise ValueError(f"vocab_size {vocab_size} is smaller than the tokenizer's {len(tokens)} tokens")
        self.vocab_size = vocab_size
        self.types = torch.full((vocab_size,), T_OTHER, dtype=torch.long)
        self.position = torch.full((vocab_size,), -1, dtype=torch.long)
        self.bar_positions = torch.zeros(vocab_size, dtype=torch.long)
        self.timesig_of: dict[tuple[int, int], int] = {}
        for i, token in enumerate(tokens):
            kind, _, value = token.partition("_")
            if token == "EOS_None":
                self.types[i] = T_EOS
            elif kind in ("PAD", "BOS", "MASK"):
                self.types[i] = T_SPECIAL
            elif kind in _KINDS:
                self.types[i] = _KINDS[kind]
                if kind == "Position":
                    self.position[i] = int(value)
                elif kind == "TimeSig":
                    n, d = (int(x) for x in value.split("/"))
                    self.bar_positions[i] = n * positions_per_beat
                    self.timesig_of[(n, d)] = i
        if int(self.types[EOS]) != T_EOS:
            raise ValueError("the vocabulary's EOS is not at the EOS id")
        self.max_positions = int(self.bar_positions.max()) if self.timesig_of else 0
        self.follow = torch.zeros(NUM_TYPES, vocab_size, dtype=torch.bool)
        for prev, nexts in _FOLLOW.items():
            for nxt in nexts:
                self.follow[prev] |= self.types == nxt

    @classmethod
    def for_tokenizer(cls, tokenizer, vocab_size: int | None = None) -> TokenGrammar:
        from ..tokens.tokenizer import Vocab

        vocab = Vocab(tokenizer)
        return cls(vocab.tokens, vocab_size or len(vocab.tokens), vocab.positions_per_beat)

    def to(self, device: torch.device) -> TokenGrammar:
        for name in ("types", "position", "bar_positions", "follow"):
            setattr(self, name, getattr(self, name).to(device))
        return self


@dataclass
class GrammarState:
    """Where each sequence of a batch stands in the grammar; all fields are (B,) tensors except ``timesigs``.

    target_bars: bars to produce (-1 = unbounded, language modelling); timesigs (B, bars): the TimeSig id
    each bar must start with (-1 = any); bar_budget: tokens per bar before it is made to close.
    """

    grammar: TokenGrammar
    last_type: torch.Tensor
    last_pos: torch.Tensor
    limit: torch.Tensor
    pedals: torch.Tensor
    bars_done: torch.Tensor
    bar_tokens: torch.Tensor
    length: torch.Tensor
    done: torch.Tensor
    target_bars: torch.Tensor
    timesigs: torch.Tensor
    bar_budget: torch.Tensor
    min_len: int = 0
    max_len: int | None = None

    @classmethod
    def start(
        cls,
        grammar: TokenGrammar,
        target_bars: Sequence[int],
        timesigs: Sequence[Sequence[int]] | None = None,
        bar_budget: Sequence[int] | int = 1024,
        min_len: int = 0,
        max_len: int | None = None,
    ) -> GrammarState:
        dev = grammar.types.device
        b = len(target_bars)
        zeros = torch.zeros(b, dtype=torch.long, device=dev)
        width = max((len(t) for t in timesigs), default=0) if timesigs is not None else 0
        ts = torch.full((b, max(width, 1)), -1, dtype=torch.long, device=dev)
        for i, row in enumerate(timesigs or []):
            if row:
                ts[i, : len(row)] = torch.tensor(list(row), dtype=torch.long)
        budget = [bar_budget] * b if isinstance(bar_budget, int) else list(bar_budget)
        return cls(
            grammar,
            last_type=torch.full((b,), T_BAR, dtype=torch.long, device=dev),
            last_pos=zeros - 1,
            limit=zeros + grammar.max_positions,
            pedals=zeros.clone(),
            bars_done=zeros.clone(),
            bar_tokens=zeros.clone(),
            length=zeros.clone(),
            done=torch.zeros(b, dtype=torch.bool, device=dev),
            target_bars=torch.tensor(list(target_bars), dtype=torch.long, device=dev),
            timesigs=ts,
            bar_budget=torch.tensor(budget, dtype=torch.long, device=dev),
            min_len=min_len,
            max_len=max_len,
        )

    def allowed(self) -> torch.Tensor:
        """(B, V) bool: the tokens each sequence may emit next (exactly PAD once it is done)."""
        g = self.grammar
        types = g.types[None, :]
        mask = g.follow[self.last_type].clone()
        is_pos = types == T_POSITION
        pos_ok = (g.position[None, :] > self.last_pos[:, None]) & (g.position[None, :] < self.limit[:, None])
        mask &= ~is_pos | pos_ok
        mask &= ~(types == T_PEDAL) | (self.pedals[:, None] < MAX_PEDALS_PER_POSITION)
        # the bar's TimeSig, when the score prescribes one
        bar = self.bars_done.clamp(max=self.timesigs.shape[1] - 1)
        required = torch.where(self.bars_done < self.timesigs.shape[1],
                               self.timesigs.gather(1, bar[:, None])[:, 0], torch.full_like(bar, -1))
        ids = torch.arange(g.vocab_size, device=mask.device)[None, :]
        mask &= ~(types == T_TIMESIG) | (required[:, None] < 0) | (ids == required[:, None])
        # over budget: finish the current note/position, then close the bar
        over = (self.bar_tokens >= self.bar_budget)[:, None]
        after_position = (self.last_type == T_POSITION)[:, None]
        restricted = is_pos | (((types == T_PITCH) | (types == T_PEDAL) | (types == T_TEMPO)) & ~after_position)
        mask &= ~(over & restricted)
        at_bar_start = self.last_type == T_BAR
        bounded = self.target_bars >= 0
        finished = bounded & (self.bars_done >= self.target_bars)
        mask[finished] = False  # no new bar after the last one
        mask[:, EOS] = (bounded & finished & at_bar_start) | (~bounded & at_bar_start & (self.length >= self.min_len))
        if self.max_len is not None:
            forced = ~bounded & (self.length >= self.max_len)
            mask[forced] = False
            mask[forced, EOS] = True
        mask[self.done] = False
        mask[:, PAD] = self.done
        return mask

    def advance(self, tokens: torch.Tensor, active: torch.Tensor | None = None) -> None:
        """Take one emitted (or forced) token per sequence; inactive/done sequences do not move."""
        g = self.grammar
        tokens = tokens.to(self.last_type.device)
        move = ~self.done if active is None else (~self.done & active.to(self.done.device))
        kind = g.types[tokens]
        is_bar, is_pos = kind == T_BAR, kind == T_POSITION
        is_ts = kind == T_TIMESIG

        def upd(old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
            return torch.where(move, new, old)

        self.last_pos = upd(self.last_pos, torch.where(is_pos, g.position[tokens],
                                                       torch.where(is_bar | is_ts, -1, self.last_pos)))
        self.limit = upd(self.limit, torch.where(is_ts, g.bar_positions[tokens],
                                                 torch.where(is_bar, g.max_positions, self.limit)))
        self.pedals = upd(self.pedals, torch.where(is_pos | is_bar, 0, self.pedals + (kind == T_PEDAL).long()))
        self.bars_done = upd(self.bars_done, self.bars_done + is_bar.long())
        self.bar_tokens = upd(self.bar_tokens, torch.where(is_bar, 0, self.bar_tokens + 1))
        self.length = upd(self.length, self.length + 1)
        self.last_type = upd(self.last_type, kind)
        self.done = self.done | (move & (kind == T_EOS))

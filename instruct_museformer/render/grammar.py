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
* a bar longer than its token budget may only finish its current note/position and close;
* score-constrained rendering (``notes``): performance bar k plays exactly score bar k's notes -- a Pitch
  only for a not yet played note of the bar whose score position is at most ``note_tolerance`` positions
  ahead, no Position past an unplayed note's position + tolerance (no note is skipped), Bar only once
  every note is played; over budget, only what finishes the notes is allowed.

Every step is a fixed-shape tensor function (no boolean indexing, state updated in place), so that the
decoding step can be replayed as a CUDA graph.

Token types come from the vocabulary strings (``Vocab.tokens``); ids beyond the tokenizer's vocabulary
(a dictionary padded by ``--padding-factor``) and the specials other than EOS are never allowed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..model.masks import round_up
from ..tokens.specials import EOS, PAD
from ..tokens.tokenizer import token_value

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
# a sixth of a beat (48 positions per beat): chosen on validation pieces and confirmed on 31 test pieces against
# half a beat (docs/model.md): notes that may drift further cross their neighbours and tempo r drops
DEFAULT_NOTE_TOLERANCE = 8
_FAR = 1 << 30  # beyond any position
# the ordinal token types, whose bins are ordered values (decoding may take a median or mean bin of them)
ORDINAL_TYPES = {"tempo": T_TEMPO, "velocity": T_VELOCITY, "duration": T_DURATION, "position": T_POSITION}


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
        self.value = torch.tensor([token_value(t) for t in tokens] + [math.nan] * (vocab_size - len(tokens)))
        # ids sorted by (type, value): a type's bins are one ascending run of this order
        self.value_order = torch.tensor(
            sorted(range(vocab_size), key=lambda i: (int(self.types[i]), _nan_last(float(self.value[i])))),
            dtype=torch.long,
        )
        self.host_types = self.types.tolist()  # host copies: reading score tokens needs no device round trip
        self.host_position = self.position.tolist()
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
        for name in ("types", "position", "bar_positions", "follow", "value", "value_order"):
            setattr(self, name, getattr(self, name).to(device))
        return self


def _nan_last(value: float) -> float:
    return math.inf if math.isnan(value) else value


Note = tuple[int, int]  # (score position, Pitch token id)


def score_bar_notes(bars: Sequence[Sequence[int]], grammar: TokenGrammar) -> list[list[Note]]:
    """Per score bar, its notes as sorted, de-duplicated (position, Pitch id) pairs: what a rendering must play."""
    types, position = grammar.host_types, grammar.host_position
    out = []
    for bar in bars:
        pos, notes = 0, set()
        for t in bar:
            kind = types[t] if 0 <= t < len(types) else T_OTHER
            if kind == T_POSITION:
                pos = position[t]
            elif kind == T_PITCH:
                notes.add((pos, int(t)))
        out.append(sorted(notes))
    return out


@dataclass
class GrammarState:
    """Where each sequence of a batch stands in the grammar; (B,) tensors unless said otherwise.

    target_bars: bars to produce (-1 = unbounded, language modelling); timesigs (B, bars): the TimeSig id
    each bar must start with (-1 = any); bar_budget: tokens per bar before it is made to close.
    Score notes (B, bars, N) -- position, Pitch id, validity -- for the ``constrained`` sequences, and
    ``played`` (B, N): which notes of the current bar were played. All tensors are updated in place.
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
    note_pos: torch.Tensor
    note_pitch: torch.Tensor
    note_valid: torch.Tensor
    constrained: torch.Tensor
    note_bars: torch.Tensor
    played: torch.Tensor
    has_notes: bool = False
    note_tolerance: int = DEFAULT_NOTE_TOLERANCE
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
        notes: Sequence[Sequence[Sequence[Note]] | None] | None = None,
        note_tolerance: int = DEFAULT_NOTE_TOLERANCE,
        pad_multiple: tuple[int, int] = (1, 1),
        min_size: tuple[int, int] = (1, 1),
    ) -> GrammarState:
        """``notes``: per sequence, per bar, the score notes that bar must play (None: free choice of notes).

        ``pad_multiple``, ``min_size`` (bars, notes per bar): the per-bar tables are padded to at least
        ``min_size``, up to multiples of ``pad_multiple``, with entries that change nothing, so that decode
        calls share the static shapes of a compiled step.
        """
        bar_step, note_step = pad_multiple
        min_bars, min_notes = min_size
        dev = grammar.types.device
        b = len(target_bars)
        zeros = torch.zeros(b, dtype=torch.long, device=dev)
        width = max((len(t) for t in timesigs), default=0) if timesigs is not None else 0
        ts = torch.full((b, round_up(max(width, min_bars), bar_step)), -1, dtype=torch.long, device=dev)
        for i, row in enumerate(timesigs or []):
            if row:
                ts[i, : len(row)] = torch.tensor(list(row), dtype=torch.long)
        budget = [bar_budget] * b if isinstance(bar_budget, int) else list(bar_budget)
        rows = list(notes) if notes is not None else [None] * b
        n_bars = max((len(r) for r in rows if r is not None), default=0)
        n_notes = max((len(bar) for r in rows if r is not None for bar in r), default=0)
        pos = torch.zeros(b, round_up(max(n_bars, min_bars), bar_step), round_up(max(n_notes, min_notes), note_step),
                          dtype=torch.long)
        pitch = torch.zeros_like(pos)
        valid = torch.zeros_like(pos, dtype=torch.bool)
        for i, r in enumerate(rows):
            for k, bar in enumerate(r or []):
                if bar:
                    pos[i, k, : len(bar)] = torch.tensor([p for p, _ in bar])
                    pitch[i, k, : len(bar)] = torch.tensor([t for _, t in bar])
                    valid[i, k, : len(bar)] = True
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
            note_pos=pos.to(dev),
            note_pitch=pitch.to(dev),
            note_valid=valid.to(dev),
            constrained=torch.tensor([r is not None for r in rows], dtype=torch.bool, device=dev),
            note_bars=torch.tensor([len(r) if r is not None else 0 for r in rows], dtype=torch.long, device=dev),
            played=torch.zeros(b, pos.shape[2], dtype=torch.bool, device=dev),
            has_notes=any(r is not None for r in rows),
            note_tolerance=note_tolerance,
            min_len=min_len,
            max_len=max_len,
        )

    def _bar_notes(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, N) positions, Pitch ids and validity of the current bar's score notes (none when unconstrained)."""
        n_bars, n = self.note_pos.shape[1:]
        idx = self.bars_done.clamp(max=n_bars - 1)[:, None, None].expand(-1, 1, n)
        pos = self.note_pos.gather(1, idx)[:, 0]
        pitch = self.note_pitch.gather(1, idx)[:, 0]
        valid = self.note_valid.gather(1, idx)[:, 0] & (self.constrained & (self.bars_done < self.note_bars))[:, None]
        return pos, pitch, valid

    def allowed(self) -> torch.Tensor:
        """(B, V) bool: the tokens each sequence may emit next (exactly PAD once it is done)."""
        g = self.grammar
        types = g.types[None, :]
        mask = g.follow[self.last_type].clone()
        is_pos = types == T_POSITION
        position = g.position[None, :]
        pos_ok = (position > self.last_pos[:, None]) & (position < self.limit[:, None])
        mask &= ~is_pos | pos_ok
        mask &= ~(types == T_PEDAL) | (self.pedals[:, None] < MAX_PEDALS_PER_POSITION)
        # the bar's TimeSig, when the score prescribes one
        bar = self.bars_done.clamp(max=self.timesigs.shape[1] - 1)
        required = torch.where(self.bars_done < self.timesigs.shape[1],
                               self.timesigs.gather(1, bar[:, None])[:, 0], torch.full_like(bar, -1))
        ids = torch.arange(g.vocab_size, device=mask.device)[None, :]
        mask &= ~(types == T_TIMESIG) | (required[:, None] < 0) | (ids == required[:, None])
        # over budget: finish the current note/position, then close the bar
        after_position = (self.last_type == T_POSITION)[:, None]
        restricted = is_pos | (((types == T_PITCH) | (types == T_PEDAL) | (types == T_TEMPO)) & ~after_position)
        if self.has_notes:
            mask, restricted = self._note_rules(mask, restricted, is_pos, position, after_position)
        over = (self.bar_tokens >= self.bar_budget)[:, None]
        mask &= ~(over & restricted)
        at_bar_start = self.last_type == T_BAR
        bounded = self.target_bars >= 0
        finished = bounded & (self.bars_done >= self.target_bars)
        mask &= ~finished[:, None]  # no new bar after the last one
        eos = (bounded & finished & at_bar_start) | (~bounded & at_bar_start & (self.length >= self.min_len))
        if self.max_len is not None:
            forced = ~bounded & (self.length >= self.max_len)
            mask &= ~forced[:, None]
            eos = eos | forced
        mask[:, EOS] = eos
        mask &= ~self.done[:, None]
        mask[:, PAD] = self.done
        return mask

    def _note_rules(
        self, mask: torch.Tensor, restricted: torch.Tensor, is_pos: torch.Tensor, position: torch.Tensor,
        after_position: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The score-note constraint on ``mask``, and what over budget still allows while notes are open.

        Never empty: with notes open, either one is playable now (a Pitch), or the earliest one's own
        position is a legal Position (> the last, <= every open note's position + tolerance, in the bar).
        """
        g, tol = self.grammar, self.note_tolerance
        types = g.types[None, :]
        pos, pitch, valid = self._bar_notes()
        pos = torch.minimum(pos, self.limit[:, None] - 1)  # a note past the bar's end plays at its last position
        open_ = valid & ~self.played
        has_open = open_.any(dim=-1)
        deadline = torch.where(open_, pos + tol, _FAR).amin(dim=-1)
        earliest = torch.where(open_, pos - tol, _FAR).amin(dim=-1)
        playable = open_ & (pos - tol <= self.last_pos[:, None])
        counts = torch.zeros(mask.shape, dtype=torch.int32, device=mask.device)
        counts.scatter_add_(1, pitch, playable.int())
        row = self.constrained[:, None]
        mask &= ~(row & (types == T_PITCH)) | (counts > 0)
        mask &= ~(row & is_pos) | (position <= deadline[:, None])
        mask &= ~(has_open[:, None] & (types == T_BAR))
        # over budget with notes open: Positions only where a note becomes playable, no new Tempo/pedal
        # except right after a Position (it must be followed by something), Pitches as the rules allow
        finishing = (is_pos & (position < earliest[:, None])) | (
            ((types == T_PEDAL) | (types == T_TEMPO)) & ~after_position)
        return mask, torch.where(has_open[:, None], finishing, restricted)

    def advance(self, tokens: torch.Tensor, active: torch.Tensor | None = None) -> None:
        """Take one emitted (or forced) token per sequence; inactive/done sequences do not move."""
        g = self.grammar
        tokens = tokens.to(self.last_type.device)
        move = ~self.done if active is None else (~self.done & active.to(self.done.device))
        kind = g.types[tokens]
        is_bar, is_pos = kind == T_BAR, kind == T_POSITION
        is_ts = kind == T_TIMESIG

        def upd(old: torch.Tensor, new: torch.Tensor) -> None:
            old.copy_(torch.where(move, new, old))

        if self.has_notes:  # mark the matching open note with the earliest score position as played
            pos, pitch, valid = self._bar_notes()
            match = valid & ~self.played & (pitch == tokens[:, None]) & (move & (kind == T_PITCH))[:, None]
            first = torch.where(match, pos, _FAR).argmin(dim=-1)
            slots = torch.arange(match.shape[1], device=match.device)[None, :]
            hit = (slots == first[:, None]) & match.any(dim=-1)[:, None]
            self.played.copy_((self.played | hit) & ~(move & is_bar)[:, None])
        upd(self.last_pos, torch.where(is_pos, g.position[tokens], torch.where(is_bar | is_ts, -1, self.last_pos)))
        upd(self.limit, torch.where(is_ts, g.bar_positions[tokens], torch.where(is_bar, g.max_positions, self.limit)))
        upd(self.pedals, torch.where(is_pos | is_bar, 0, self.pedals + (kind == T_PEDAL).long()))
        upd(self.bars_done, self.bars_done + is_bar.long())
        upd(self.bar_tokens, torch.where(is_bar, 0, self.bar_tokens + 1))
        upd(self.length, self.length + 1)
        upd(self.last_type, kind)
        self.done.copy_(self.done | (move & (kind == T_EOS)))

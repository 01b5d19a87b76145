"""Bar-structured token batches: the one type that carries tokens and their bar/beat layout to the model.

A sequence is split into bars by the Bar token (id 4), which *closes* a bar, as Museformer's ``b-1``
does. Bar ids are 1-based; special tokens (the leading EOS-as-BOS of a decoder input, the trailing EOS
of a source) and padding get bar id 0. A bar is *complete* (and so gets a summary token) when its
closing Bar token is inside the sequence; only a trailing, unclosed bar can be incomplete.

Beat ids follow Museformer's ``get_beat_ids``: an onset-position token sets the running value to its
position + 1, other tokens inherit it, and Bar tokens, specials and "change" tokens (tempo or time
signature) get 0. Which token is which comes from a per-vocabulary table built by ``tokens``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..tokens.specials import BAR, NUM_SPECIALS, PAD

# Values of a beat table entry besides a position (>= 1).
BEAT_INHERIT = -1  # the token takes the running onset value
BEAT_ZERO = 0  # the token has beat id 0 (Bar, specials, change tokens)


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` on ``device`` without making the host wait for the device.

    A CPU tensor going to a GPU is copied into pinned memory first: a copy from pageable memory larger than
    the driver's staging buffer waits for all the work queued before it (the model's layouts reach several
    hundred KB at 65,536 tokens). From pinned memory the copy is asynchronous."""
    if t.device == device:
        return t
    if t.device.type == "cpu" and device.type == "cuda":
        return (t if t.is_pinned() else t.pin_memory()).to(device, non_blocking=True)
    return t.to(device)


@dataclass
class BarTokens:
    """A padded batch of bar-structured sequences.

    tokens:            (B, T) long, padded with PAD
    bar_ids:           (B, T) long, 1-based bar of each token; 0 for specials and padding
    beat_ids:          (B, T) long, onset-position ids for the beat embedding; 0 = none
    padding_mask:      (B, T) bool, True at padding
    num_complete_bars: (B,)   long, bars closed by a Bar token (the ones that get summaries)
    """

    tokens: torch.Tensor
    bar_ids: torch.Tensor
    beat_ids: torch.Tensor
    padding_mask: torch.Tensor
    num_complete_bars: torch.Tensor
    # the CPU original of a batch moved to an accelerator: the model derives its attention layouts from it
    # (host work of a few ms) instead of reading the bar ids back from the device, which would wait for the
    # device to finish everything queued before
    host: BarTokens | None = field(default=None, repr=False, compare=False)

    @property
    def lengths(self) -> torch.Tensor:
        return (~self.padding_mask).sum(dim=1)

    def to(self, device: torch.device | str) -> BarTokens:
        """On ``device``; off the CPU, copied without waiting (``host`` keeps the CPU original)."""
        device = torch.device(device)
        moved = (to_device(t, device) for t in self.as_tuple())
        if device.type == "cpu":
            return BarTokens(*moved)
        host = self.host if self.host is not None else self if self.tokens.device.type == "cpu" else None
        return BarTokens(*moved, host=host)

    def on_host(self) -> BarTokens:
        """The CPU copy of these tokens where there is one (``host``), else these tokens."""
        return self if self.host is None else self.host

    def as_tuple(self) -> tuple[torch.Tensor, ...]:
        return (self.tokens, self.bar_ids, self.beat_ids, self.padding_mask, self.num_complete_bars)

    def pad_to(self, length: int) -> BarTokens:
        """These tokens with padding appended up to ``length`` positions (itself if that long already)."""
        extra = length - self.tokens.shape[1]
        if extra <= 0:
            return self
        pad = torch.nn.functional.pad
        return BarTokens(
            pad(self.tokens, (0, extra), value=PAD),
            pad(self.bar_ids, (0, extra)),
            pad(self.beat_ids, (0, extra)),
            pad(self.padding_mask, (0, extra), value=True),
            self.num_complete_bars,
        )


def bar_ids_of(tokens: torch.Tensor, bar_token: int = BAR) -> torch.Tensor:
    """1-based bar id of every token of one unpadded sequence (T,); specials get 0."""
    is_bar = tokens == bar_token
    # Bars closed strictly before each position, + 1: the closing Bar token belongs to its own bar.
    closed_before = torch.cumsum(is_bar.long(), dim=0) - is_bar.long()
    bar_ids = closed_before + 1
    return torch.where(tokens < NUM_SPECIALS, torch.zeros_like(bar_ids), bar_ids)


def beat_ids_of(tokens: torch.Tensor, beat_table: torch.Tensor) -> torch.Tensor:
    """Beat id of every token of one unpadded sequence (T,), from a (V,) beat table.

    As in Museformer, the running value is that of the most recent onset-position token (it is never
    reset at a bar line); tokens whose table entry is BEAT_ZERO are then forced to 0.
    """
    values = beat_table[tokens]
    positions = torch.arange(tokens.numel(), device=tokens.device)
    is_position = values > 0
    last_position = torch.cummax(torch.where(is_position, positions, torch.full_like(positions, -1)), dim=0)
    last = last_position.values
    running = torch.where(last >= 0, values[last.clamp(min=0)], torch.zeros_like(values))
    return torch.where(values == BEAT_ZERO, torch.zeros_like(values), running)


def collate_bar_tokens(
    sequences: Sequence[torch.Tensor], beat_table: torch.Tensor, bar_token: int = BAR
) -> BarTokens:
    """Pad unpadded 1-D sequences into a BarTokens batch, computing bar and beat ids per sequence."""
    batch = len(sequences)
    length = max((len(s) for s in sequences), default=0)
    tokens = torch.full((batch, length), PAD, dtype=torch.long)
    bar_ids = torch.zeros((batch, length), dtype=torch.long)
    beat_ids = torch.zeros((batch, length), dtype=torch.long)
    padding_mask = torch.ones((batch, length), dtype=torch.bool)
    num_complete = torch.zeros(batch, dtype=torch.long)
    for i, seq in enumerate(sequences):
        seq = seq.long()
        n = len(seq)
        tokens[i, :n] = seq
        bar_ids[i, :n] = bar_ids_of(seq, bar_token)
        beat_ids[i, :n] = beat_ids_of(seq, beat_table)
        padding_mask[i, :n] = False
        num_complete[i] = int((seq == bar_token).sum())
    return BarTokens(tokens, bar_ids, beat_ids, padding_mask, num_complete)


@dataclass
class Batch:
    """What one training/validation step consumes.

    prev_output: decoder input, ``[EOS] + target[:-1]`` (fairseq's prev_output_tokens; EOS acts as BOS)
    target:      (B, T) long, the performance tokens ending with EOS, padded with PAD
    source:      encoder input (score tokens + EOS); None for the decoder-only language model
    ntokens:     number of non-pad target tokens (the loss is a mean over them)
    ids:         (B,) long, dataset indices of the samples
    layouts:     the model's attention layouts for this batch, built on the host by the data loader
                 (``model.planning.BatchLayouts``); None: the model builds them itself
    """

    prev_output: BarTokens
    target: torch.Tensor
    source: BarTokens | None
    ntokens: int
    ids: torch.Tensor
    layouts: Any = field(default=None, repr=False, compare=False)

    def pad_to(self, target_length: int, source_length: int | None = None) -> Batch:
        """This batch with padding appended: the decoder side up to ``target_length`` positions, the source up
        to ``source_length`` (padding reads and is read by nothing, and its targets are PAD: the loss is
        unchanged). Layouts are not carried over: they describe the unpadded batch."""
        target = self.target
        extra = target_length - target.shape[1]
        if extra > 0:
            target = torch.nn.functional.pad(target, (0, extra), value=PAD)
        source = self.source
        if source is not None and source_length is not None:
            source = source.pad_to(source_length)
        return Batch(self.prev_output.pad_to(target_length), target, source, self.ntokens, self.ids)

    def to(self, device: torch.device | str) -> Batch:
        device = torch.device(device)
        return Batch(
            self.prev_output.to(device),
            to_device(self.target, device),
            None if self.source is None else self.source.to(device),
            self.ntokens,
            to_device(self.ids, device),
            self.layouts,  # moved by the model, which knows what its path needs of them
        )

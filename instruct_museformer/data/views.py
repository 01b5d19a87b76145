"""How a checkpoint reads its samples beyond the stored tokens: the markings carried into chunks that start
mid-piece (``--carry-markings``) and the tempo relative to the mark (``--tempo-relative-to-mark``). Training,
``imf diagnose`` and ``imf render`` build them from the same arguments, so a model is always fed as it was
trained."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import UserError
from .carried_markings import MarkingsInForce
from .mark_relative import MarkRelativeTempo


@dataclass(frozen=True)
class SampleViews:
    carry: MarkingsInForce | None = None
    relative: MarkRelativeTempo | None = None


def sample_views(args: Mapping[str, Any], tokens: Sequence[str] | None, vocab_size: int | None = None) -> SampleViews:
    """The views ``args`` (a checkpoint's or ``imf train``'s arguments) ask for; ``tokens``: the vocabulary's token
    names (None: the data has no tokenizer.json, which these views need)."""
    carry, relative = bool(args.get("carry_markings")), bool(args.get("tempo_relative_to_mark"))
    if (carry or relative) and tokens is None:
        flag = "--carry-markings" if carry else "--tempo-relative-to-mark"
        raise UserError(f"{flag}: needs token names, from a tokenizer.json in the data-bin")
    return SampleViews(
        MarkingsInForce.build(tokens, vocab_size) if carry else None,
        MarkRelativeTempo.build(tokens, vocab_size) if relative else None,
    )

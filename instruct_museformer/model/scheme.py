"""Museformer's attention-scheme grammar (``--con2con`` and friends) -> one bar-offset set per layer.

The original passed these strings through Python ``eval``; we parse the same language with a small
tokenizer and a recursive-descent parser (no ``eval``), so that a malformed string is reported with the
column of the problem and a caret under it, and nothing a user writes is ever executed.

Grammar (Python tuple syntax: ``(x)`` is just ``x``, ``(x,)`` is a 1-tuple, trailing commas allowed)::

    scheme  := tuple over layers      (1 item = every layer, else exactly one item per layer)
    layer   := tuple over heads       (1 item = every head; several items must all be equal)
    command := None | tuple of items  (None selects no bar)
    item    := INT                    (exactly that offset)
             | (begin, end)           (begin <= offset < end; None = unbounded; empty if begin >= end)

An offset is ``key bar - query bar``: 0 is the same bar, negative values are earlier bars. The ``*_self``
option then overrides offset 0: ``full`` adds it, ``none`` removes it, ``default`` keeps the command's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UserError

SELF_MODES = ("default", "none", "full")


@dataclass(frozen=True)
class OffsetSet:
    """A set of relative bar offsets: a union of half-open intervals, None = unbounded."""

    intervals: tuple[tuple[int | None, int | None], ...]

    def contains(self, offsets: torch.Tensor) -> torch.Tensor:
        """Element-wise membership of an integer tensor of offsets (any shape) -> bool tensor."""
        out = torch.zeros(offsets.shape, dtype=torch.bool, device=offsets.device)
        for begin, end in self.intervals:
            inside = torch.ones_like(out)
            if begin is not None:
                inside &= offsets >= begin
            if end is not None:
                inside &= offsets < end
            out |= inside
        return out

    def with_self(self, mode: str) -> OffsetSet:
        """Apply a ``*_self`` option to offset 0."""
        if mode == "default":
            return self
        if mode == "full":
            return OffsetSet(self.intervals + ((0, 1),))
        if mode == "none":
            pieces: list[tuple[int | None, int | None]] = []
            for begin, end in self.intervals:
                # Split each interval around 0; an interval that excludes 0 is kept as is.
                if (begin is None or begin <= 0) and (end is None or end > 0):
                    pieces.append((begin, 0))
                    pieces.append((1, end))
                else:
                    pieces.append((begin, end))
            return OffsetSet(tuple(p for p in pieces if not _empty(p)))
        raise ValueError(f"unknown self mode {mode!r}; expected one of {', '.join(SELF_MODES)}")

    def as_list(self, lo: int, hi: int) -> list[int]:
        """The member offsets within [lo, hi] (for tests and messages)."""
        offs = torch.arange(lo, hi + 1)
        return offs[self.contains(offs)].tolist()


def _empty(interval: tuple[int | None, int | None]) -> bool:
    begin, end = interval
    return begin is not None and end is not None and begin >= end


# ---------------------------------------------------------------------------------------------------
# Tokenizer and parser (generic Python-tuple syntax with ints and None, keeping columns for messages).


@dataclass(frozen=True)
class _Tok:
    kind: str  # "(" ")" "," "int" "none" "end"
    text: str
    col: int  # 0-based


@dataclass(frozen=True)
class _Node:
    """A parsed value: a tuple (items), an int, or None; ``col`` is where it starts."""

    kind: str  # "tuple" | "int" | "none"
    col: int
    items: tuple[_Node, ...] = ()
    value: int | None = None


class SchemeError(UserError):
    """A malformed scheme string; the message shows the string with a caret at the problem."""


def _fail(name: str, text: str, col: int, problem: str) -> SchemeError:
    return SchemeError(f"--{name.replace('_', '-')}: {problem} at column {col + 1}\n  {text}\n  {' ' * col}^")


def _tokenize(name: str, text: str) -> list[_Tok]:
    toks: list[_Tok] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c in " \t":
            i += 1
        elif c in "(),":
            toks.append(_Tok(c, c, i))
            i += 1
        elif c == "-" or c == "+" or c.isdigit():
            j = i + 1 if c in "+-" else i
            while j < len(text) and text[j] == " ":  # Python allows "- 3"
                j += 1
            k = j
            while k < len(text) and text[k].isdigit():
                k += 1
            if k == j:
                raise _fail(name, text, i, "expected digits after the sign")
            toks.append(_Tok("int", text[i:k].replace(" ", ""), i))
            i = k
        elif text.startswith("None", i) and not text[i + 4 : i + 5].isalnum():
            toks.append(_Tok("none", "None", i))
            i += 4
        else:
            raise _fail(name, text, i, f"unexpected character {c!r}")
    toks.append(_Tok("end", "", len(text)))
    return toks


class _Parser:
    def __init__(self, name: str, text: str) -> None:
        self.name, self.text = name, text
        self.toks = _tokenize(name, text)
        self.pos = 0

    def peek(self) -> _Tok:
        return self.toks[self.pos]

    def take(self) -> _Tok:
        tok = self.toks[self.pos]
        self.pos += 1
        return tok

    def error(self, tok: _Tok, problem: str) -> SchemeError:
        return _fail(self.name, self.text, tok.col, problem)

    def parse(self) -> _Node:
        if self.peek().kind == "end":
            raise self.error(self.peek(), "empty scheme")
        node = self.value()
        if self.peek().kind != "end":
            raise self.error(self.peek(), f"unexpected {self.peek().text!r} after the end of the scheme")
        return node

    def value(self) -> _Node:
        tok = self.take()
        if tok.kind == "int":
            return _Node("int", tok.col, value=int(tok.text))
        if tok.kind == "none":
            return _Node("none", tok.col)
        if tok.kind != "(":
            raise self.error(tok, "expected '(', an integer or None" if tok.kind != "end" else "unexpected end")
        items: list[_Node] = []
        trailing_comma = False
        while self.peek().kind != ")":
            if self.peek().kind == "end":
                raise self.error(self.peek(), f"unclosed '(' (opened at column {tok.col + 1})")
            items.append(self.value())
            trailing_comma = False
            nxt = self.peek()
            if nxt.kind == ",":
                self.take()
                trailing_comma = True
            elif nxt.kind != ")":
                raise self.error(nxt, "expected ',' or ')'")
        self.take()
        if len(items) == 1 and not trailing_comma:
            return items[0]  # a parenthesised value, not a tuple (Python semantics)
        return _Node("tuple", tok.col, items=tuple(items))


# ---------------------------------------------------------------------------------------------------
# Interpretation of the four levels.


def _offset_set(name: str, text: str, command: _Node) -> OffsetSet:
    if command.kind == "none":
        return OffsetSet(())
    if command.kind != "tuple":
        raise _fail(name, text, command.col, "a range command must be None or a tuple of items")
    intervals: list[tuple[int | None, int | None]] = []
    for item in command.items:
        if item.kind == "int":
            assert item.value is not None
            intervals.append((item.value, item.value + 1))
        elif item.kind == "tuple" and len(item.items) == 2:
            bounds: list[int | None] = []
            for b in item.items:
                if b.kind == "tuple":
                    raise _fail(name, text, b.col, "an interval bound must be an integer or None")
                bounds.append(b.value)
            interval = (bounds[0], bounds[1])
            if not _empty(interval):  # the original ignores begin >= end
                intervals.append(interval)
        else:
            raise _fail(name, text, item.col, "an item must be an integer offset or a (begin, end) pair")
    return OffsetSet(tuple(intervals))


def parse_scheme(name: str, text: str, num_layers: int, self_mode: str = "default") -> list[OffsetSet]:
    """Parse one scheme option into ``num_layers`` offset sets (``name`` is the option, for messages)."""
    if self_mode not in SELF_MODES:
        raise UserError(f"--{name.replace('_', '-')}-self: expected one of {', '.join(SELF_MODES)}, got {self_mode!r}")
    root = _Parser(name, text).parse()
    if root.kind != "tuple" or not root.items:
        raise _fail(name, text, root.col, "the scheme must be a non-empty tuple over layers, e.g. ((None,),)")
    layers = root.items
    if len(layers) not in (1, num_layers):
        problem = f"{len(layers)} layer entries for a model of {num_layers} layers (give 1 or {num_layers})"
        raise _fail(name, text, root.col, problem)
    per_layer: list[OffsetSet] = []
    for layer in layers:
        if layer.kind != "tuple" or not layer.items:
            raise _fail(name, text, layer.col, "a layer entry must be a non-empty tuple over heads, e.g. (None,)")
        heads = [_offset_set(name, text, h) for h in layer.items]
        if any(h != heads[0] for h in heads[1:]):
            raise _fail(name, text, layer.col, "all heads of a layer must have the same scheme")
        per_layer.append(heads[0].with_self(self_mode))
    if len(per_layer) == 1:
        per_layer = per_layer * num_layers
    return per_layer

"""What a data-bin's tokens mean to the model beyond their ids: the bar token and the beat of each token.

Museformer needs two things from a vocabulary: which token closes a bar (``--eob-token``, id 4 =
MidiTok's ``Bar_None`` by default) and, for its beat embedding, the beat table of
:func:`..data.batch.beat_ids_of`. Where the beats come from, in this order:

* ``tokenizer.json`` beside the dictionaries, written by this project's tokenizer: as always;
* any other MidiTok tokenizer JSON of the REMI family (tokens ``Position_p``): ``Position_p`` sets the
  onset position ``p + 1`` (the tokenizer's own beat resolution, ``max_num_pos_per_beat`` per beat,
  inside bars of its time signatures, 4/4 when it has none), Bar/specials and the change token
  (``TimeSig`` with ``--beat-mask-ts``, else ``Tempo``) get 0 -- exactly the rule of our own tokenizer;
* no tokenizer, or a MidiTok tokenizer without Position tokens (TSD, MIDILike, a BPE-trained one):
  no beats -- every beat id is 0 and the model learns from the bar structure alone.

Nothing is guessed: a tokenizer JSON whose vocabulary does not fit the dictionary (another size, or
specials not at 0-3) is an error naming both files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from ..tokens.specials import BAR, EOS, NUM_SPECIALS, PAD
from .batch import BEAT_INHERIT, BEAT_ZERO

TOKENIZER_FILE = "tokenizer.json"
PROJECT, MIDITOK, NONE = "project", "miditok", "none"  # TokenLayout.kind


@dataclass(frozen=True)
class TokenLayout:
    """A vocabulary's bar token and beat table, and where the beats came from (for the log and checkpoints)."""

    vocab_size: int
    bar_token: int
    beat_table: torch.Tensor  # (vocab_size,) long, see data.batch.beat_ids_of
    kind: str  # PROJECT, MIDITOK or NONE
    tokenizer_path: Path | None
    description: str  # one line: where the beats come from

    @property
    def has_beats(self) -> bool:
        return self.kind != NONE and bool((self.beat_table > 0).any())


def load_miditok(path: Path) -> Any:
    """Any MidiTok tokenizer from its JSON file; UserError names the file when it is not one."""
    import miditok

    try:
        params = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path}: not a tokenizer JSON file ({error})") from None
    name = params.get("tokenization") if isinstance(params, dict) else None
    cls = getattr(miditok, str(name), None)
    if not isinstance(cls, type) or not issubclass(cls, miditok.MusicTokenizer) or "config" not in params:
        raise UserError(f"{path}: not a MidiTok tokenizer file (no known 'tokenization' and 'config')")
    try:
        tokenizer = cls(params=path)
    except Exception as error:  # MidiTok raises assorted errors on malformed configs
        raise UserError(f"{path}: cannot build a tokenizer from this file ({type(error).__name__}: {error})") from None
    if isinstance(tokenizer, miditok.REMI):  # this project's score-marking tokens, when its config asks for them
        from ..tokens.tokenizer import add_marking_tokens

        add_marking_tokens(tokenizer, str(path))
    if not isinstance(tokenizer.vocab, dict):
        raise UserError(f"{path}: a {name} tokenizer has one vocabulary per token field; a dictionary of one "
                        "token per line cannot hold it")
    return tokenizer


def tokenizer_tokens(tokenizer: Any) -> list[str]:
    """The tokenizer's model ids as token strings, in id order (a trained tokenizer: its merged tokens)."""
    vocab = tokenizer.vocab_model if getattr(tokenizer, "is_trained", False) else tokenizer.vocab
    by_id = sorted(vocab.items(), key=lambda item: item[1])
    return [token for token, _ in by_id]


def is_project_tokenizer(tokenizer: Any) -> bool:
    from ..tokens.tokenizer import layout_problem

    return not getattr(tokenizer, "is_trained", False) and layout_problem(tokenizer) is None


def miditok_beat_table(tokenizer: Any, vocab_size: int, beat_mask_ts: bool) -> tuple[torch.Tensor, str]:
    """(beat table, description) of a MidiTok tokenizer; an all-zero table when it has no Position tokens."""
    tokens = tokenizer_tokens(tokenizer)
    table = torch.full((vocab_size,), BEAT_INHERIT, dtype=torch.long)
    table[:NUM_SPECIALS] = BEAT_ZERO
    name = type(tokenizer).__name__
    if getattr(tokenizer, "is_trained", False) or not any(t.startswith("Position_") for t in tokens):
        why = "trained (merged) tokens" if getattr(tokenizer, "is_trained", False) else "no Position tokens"
        return torch.zeros(vocab_size, dtype=torch.long), f"MidiTok {name} tokenizer with {why}: no beats"
    change = "TimeSig" if beat_mask_ts else "Tempo"
    for token_id, token in enumerate(tokens):
        kind, _, value = token.partition("_")
        if kind == "Position":
            table[token_id] = int(value) + 1
        elif kind in ("Bar", change):
            table[token_id] = BEAT_ZERO
    config = tokenizer.config
    per_beat = int(config.max_num_pos_per_beat)
    signatures = "its time signatures" if config.use_time_signatures else "4/4 (no time signatures)"
    positions = sum(1 for t in tokens if t.startswith("Position_"))
    return table, (f"MidiTok {name} tokenizer: beats from {positions} Position tokens, {per_beat} per beat, "
                   f"bars of {signatures}")


def _check_fit(tokenizer: Any, path: Path, dict_paths: list[Path], dict_sizes: list[int],
               padding: list[int]) -> None:
    """The tokenizer's vocabulary must be the dictionary's: same size (count-0 padding aside), specials 0-3."""
    tokens = tokenizer_tokens(tokenizer)
    for dict_path, size, padded in zip(dict_paths, dict_sizes, padding, strict=True):
        if not size - padded <= len(tokens) <= size:
            raise UserError(
                f"{path} does not match {dict_path}: the tokenizer has {len(tokens)} tokens, the dictionary "
                f"{size} entries (line k must be token id k of the tokenizer)"
            )
    expected = {PAD: "PAD", EOS: "EOS"}
    specials = set(getattr(tokenizer, "special_tokens", []))
    for token_id in range(NUM_SPECIALS):
        token = tokens[token_id]
        want = expected.get(token_id)
        if token not in specials or (want is not None and token.partition("_")[0] != want):
            role = f"{want}_None" if want else "a special token"
            raise UserError(
                f"{path} does not match {dict_paths[0]}: token id {token_id} is {token!r}, the dictionary's id "
                f"{token_id} is {role} (pad 0, bos 1, eos 2, unk 3)"
            )


def resolve_bar_token(eob_token: str | None, vocab_size: int, tokens: list[str] | None, where: Path) -> int:
    """The bar token's id from ``--eob-token`` (an id, or with a tokenizer a token name); default 4."""
    if eob_token is None:
        if tokens is not None and len(tokens) > BAR and tokens[BAR] != "Bar_None" and "Bar_None" in tokens:
            raise UserError(f"{where}: Bar_None has id {tokens.index('Bar_None')}, not {BAR}: pass "
                            f"--eob-token {tokens.index('Bar_None')}")
        return BAR
    text = str(eob_token).strip()
    if text.isdigit():
        bar = int(text)
    elif tokens is not None and text in tokens:
        bar = tokens.index(text)
    else:
        known = " or a token of the tokenizer" if tokens is not None else ""
        raise UserError(f"--eob-token {eob_token}: not a token id of the dictionary{known}")
    if not NUM_SPECIALS <= bar < vocab_size:
        raise UserError(f"--eob-token {eob_token}: id {bar} is not a content token of the dictionary "
                        f"({NUM_SPECIALS}..{vocab_size - 1})")
    return bar


def token_layout(
    tokenizer_path: Path | None,
    dict_paths: list[Path],
    vocab_size: int,
    *,
    beat_mask_ts: bool = False,
    eob_token: str | None = None,
) -> TokenLayout:
    """The layout of a vocabulary of ``vocab_size`` ids (the dictionaries') with an optional tokenizer JSON."""
    from ..data.dictionary import Dictionary

    where = dict_paths[0] if dict_paths else Path(".")
    if tokenizer_path is None or not Path(tokenizer_path).is_file():
        bar = resolve_bar_token(eob_token, vocab_size, None, where)
        table = torch.zeros(vocab_size, dtype=torch.long)
        return TokenLayout(vocab_size, bar, table, NONE, None,
                           f"no {TOKENIZER_FILE}: no beats, training with bar structure only (bar token {bar})")
    tokenizer_path = Path(tokenizer_path)
    tokenizer = load_miditok(tokenizer_path)
    dictionaries = [Dictionary.load(p) for p in dict_paths]
    padding = [len(d.counts) - 1 - max((i for i, c in enumerate(d.counts) if c), default=0) for d in dictionaries]
    _check_fit(tokenizer, tokenizer_path, dict_paths, [len(d) for d in dictionaries], padding)
    tokens = tokenizer_tokens(tokenizer)
    bar = resolve_bar_token(eob_token, vocab_size, tokens, tokenizer_path)
    if is_project_tokenizer(tokenizer):
        from ..tokens.tokenizer import beat_table

        table = beat_table(tokenizer, beat_mask_ts=beat_mask_ts)
        table = torch.cat([table, torch.full((vocab_size - len(table),), BEAT_INHERIT, dtype=torch.long)])
        return TokenLayout(vocab_size, bar, table, PROJECT, tokenizer_path, f"beats from {tokenizer_path} "
                           "(this project's tokenizer)")
    table, description = miditok_beat_table(tokenizer, vocab_size, beat_mask_ts)
    return TokenLayout(vocab_size, bar, table, MIDITOK, tokenizer_path,
                       f"{tokenizer_path}: {description}; bar token {bar} ({tokens[bar]})")

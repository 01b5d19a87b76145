"""The project's one MidiTok REMI configuration, its JSON file, and the per-token tables built from it.

One vocabulary serves both sides of a pair (score and performance), so a single dictionary and a
single embedding table fit the translation model. The configuration is chosen for performances:

- Position: 48 per beat (a beat is the time signature's denominator; ``x/2`` bars are written as
  ``2x/4`` by the encoder, so a position is at most 1/48 of a quarter). With a beat-aligned tempo map
  a position lasts ~21 ms at 60 beats per minute and ~31 ms in the slowest (n)ASAP adagios (40), so
  the rounding error (half of that at most) keeps round-trip onsets within the issue's targets; 32
  per beat measured a 10-11 ms median on Beethoven op. 53/2, over the 10 ms target.
- Tempo: 128 log-spaced bins (3.7% apart), 10..1000 quarters per minute; the encoder writes one per
  (musical) beat and chooses each value with error feedback, so decoded beat times track the played
  ones. The range is wide on purpose: presto movements are played above 400 quarters per minute
  (Chopin's Scherzo op. 20: median 336, 1% of beats above 690), and a capped tempo makes the decoded
  bar lines lag behind the played ones (78% of aligned notes in their bar with a 400 cap, 99.9% now).
- Velocity: 32 bins; sustain pedal as Pedal/PedalOff tokens; durations down to 1/48 beat.
- Time signatures x/4, x/8, x/16 with x = 1..12; longer or odd measures are split / re-expressed by
  :mod:`.grid`, so Position ids stay below 12 * 48.

Token ids: PAD=0 BOS=1 EOS=2 MASK=3 (MidiTok's specials, in this order) and ``Bar_None`` = 4, as
:mod:`.specials` fixes; :func:`load_tokenizer` checks this. With the ``score_markings`` option (on for
new tokenizations) the score-marking tokens of :mod:`.markings` follow MidiTok's vocabulary, so every
id of a configuration without the option keeps its meaning (docs/tokens.md).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import miditok
import numpy as np
import torch

from ..errors import UserError
from . import specials
from .markings import MARKING_TOKENS, MARKINGS_VERSION

POSITIONS_PER_BEAT = 48
MAX_BEATS_PER_BAR = 12
TIME_SIGNATURE_DENOMINATORS = (4, 8, 16)


def _config(score_markings: bool) -> miditok.TokenizerConfig:
    extra = {"score_markings": MARKINGS_VERSION} if score_markings else {}
    return miditok.TokenizerConfig(
        pitch_range=(21, 108),
        beat_res={(0, 1): POSITIONS_PER_BEAT, (1, 2): 16, (2, 4): 8, (4, 8): 4, (8, 16): 2},
        num_velocities=32,
        special_tokens=["PAD", "BOS", "EOS", "MASK"],
        use_velocities=True,
        use_chords=False,
        use_rests=False,
        use_tempos=True,
        use_time_signatures=True,
        use_sustain_pedals=True,
        sustain_pedal_duration=False,
        use_pitch_bends=False,
        use_programs=False,
        use_pitchdrum_tokens=False,
        num_tempos=128,
        tempo_range=(10, 1000),
        log_tempos=True,
        delete_equal_successive_tempo_changes=False,
        delete_equal_successive_time_sig_changes=False,
        time_signature_range={d: list(range(1, MAX_BEATS_PER_BAR + 1)) for d in TIME_SIGNATURE_DENOMINATORS},
        **extra,
    )


def build_tokenizer(score_markings: bool = True) -> miditok.REMI:
    """The project's one REMI configuration (see the module docstring for why each setting).

    ``score_markings`` (the default for new tokenizations) adds the score-marking tokens after the REMI
    vocabulary (docs/tokens.md); without it the vocabulary and ids are those of the first models.
    """
    tokenizer = miditok.REMI(_config(score_markings))
    add_marking_tokens(tokenizer, "built tokenizer")
    _check_layout(tokenizer, "built tokenizer")
    return tokenizer


def markings_version(tokenizer: miditok.REMI) -> int:
    """The ``score_markings`` option of a tokenizer configuration (0: none, as in configs written before it)."""
    value = (tokenizer.config.additional_params or {}).get("score_markings") or 0
    return int(value) if isinstance(value, (int, float, bool)) else -1


def add_marking_tokens(tokenizer: miditok.REMI, where: str) -> None:
    """Append the marking tokens after MidiTok's vocabulary (saved configs record only the option)."""
    version = markings_version(tokenizer)
    if version == 0:
        return
    if version != MARKINGS_VERSION:
        raise UserError(f"{where}: score_markings version {version} is not known to this version "
                        f"(it writes version {MARKINGS_VERSION})")
    for token in MARKING_TOKENS:
        tokenizer.add_to_vocab(token)


def save_tokenizer(tokenizer: miditok.REMI, path: Path) -> None:
    """Write the configuration as MidiTok's JSON to ``path`` (a file), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".tok-") as tmp:
        tokenizer.save(tmp, filename="tokenizer.json")
        os.replace(Path(tmp) / "tokenizer.json", path)


def load_tokenizer(path: Path) -> miditok.REMI:
    """Load a configuration written by :func:`save_tokenizer`; UserError names the file if it is unusable."""
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise UserError(f"{path}: tokenizer file not found")
    try:
        params = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path}: not a tokenizer JSON file ({error})") from None
    if not isinstance(params, dict) or params.get("tokenization") != "REMI" or "config" not in params:
        raise UserError(f"{path}: not a MidiTok REMI tokenizer file")
    try:
        tokenizer = miditok.REMI(params=path)
    except Exception as error:  # MidiTok raises assorted errors on malformed configs
        raise UserError(f"{path}: cannot build a tokenizer from this file ({type(error).__name__}: {error})") from None
    add_marking_tokens(tokenizer, str(path))
    _check_layout(tokenizer, str(path))
    return tokenizer


def layout_problem(tokenizer: miditok.MusicTokenizer) -> str | None:
    """Why this project's encoder/decoder cannot drive ``tokenizer`` (None: it can)."""
    if not isinstance(tokenizer, miditok.REMI):
        return f"a MidiTok {type(tokenizer).__name__} tokenizer, not REMI"
    expected = {"PAD_None": specials.PAD, "BOS_None": specials.BOS, "EOS_None": specials.EOS,
                "MASK_None": specials.MASK, "Bar_None": specials.BAR}
    vocab = tokenizer.vocab
    for token, token_id in expected.items():
        if vocab.get(token) != token_id:
            return f"token {token} must have id {token_id}, has {vocab.get(token)}"
    if not (tokenizer.config.use_tempos and tokenizer.config.use_time_signatures):
        return "the tokenizer needs Tempo and TimeSig tokens"
    return None


def _check_layout(tokenizer: miditok.REMI, where: str) -> None:
    problem = layout_problem(tokenizer)
    if problem is not None:
        raise UserError(f"{where}: {problem}")


def vocab_tokens(tokenizer: miditok.REMI) -> list[str]:
    """Token strings in id order: line k of a dictionary built from this list is token id k."""
    by_id = sorted(tokenizer.vocab.items(), key=lambda item: item[1])
    assert [i for _, i in by_id] == list(range(len(by_id)))
    return [token for token, _ in by_id]


def beat_table(tokenizer: miditok.REMI, beat_mask_ts: bool = True) -> torch.LongTensor:
    """(V,) beat-id table for data.batch.beat_ids_of (Museformer's ``get_beat_ids``).

    ``Position_p`` -> p + 1; Bar, the specials and the "change" tokens (TimeSig when ``beat_mask_ts``,
    else Tempo) -> 0 (BEAT_ZERO); every other token -> -1 (BEAT_INHERIT, takes the running value).
    """
    change = "TimeSig" if beat_mask_ts else "Tempo"
    table = torch.full((len(tokenizer.vocab),), -1, dtype=torch.long)
    for token, token_id in tokenizer.vocab.items():
        kind, _, value = token.partition("_")
        if kind == "Position":
            table[token_id] = int(value) + 1
        elif kind in ("Bar", change) or token_id < specials.NUM_SPECIALS:
            table[token_id] = 0
    return table


def token_value(token: str) -> float:
    """The ordered value of an ordinal token (log qpm, velocity, beats, position); NaN for other tokens."""
    kind, _, value = token.partition("_")
    if kind == "Tempo":
        return math.log(float(value))
    if kind in ("Velocity", "Position"):
        return float(value)
    if kind == "Duration":
        beats, pos, res = (int(x) for x in value.split("."))
        return beats + pos / res
    return float("nan")


def nearest_tempo_bin(tempos: np.ndarray, qpm: float) -> int:
    """Index of the Tempo bin nearest ``qpm`` on a log scale: how the tokenizers pick a Tempo token."""
    return int(np.abs(np.log(np.asarray(tempos, dtype=np.float64) / qpm)).argmin())


@dataclass(frozen=True)
class Vocab:
    """Fast id lookups for the encoder and decoder (built once per tokenizer)."""

    tokenizer: miditok.REMI

    @cached_property
    def ids(self) -> dict[str, int]:
        return dict(self.tokenizer.vocab)

    @cached_property
    def tokens(self) -> list[str]:
        return vocab_tokens(self.tokenizer)

    @cached_property
    def score_markings(self) -> bool:
        """Whether scores are written with their marking tokens (the tokenizer's ``score_markings`` option)."""
        return markings_version(self.tokenizer) > 0

    @property
    def ticks_per_quarter(self) -> int:
        return int(self.tokenizer.time_division)

    @property
    def positions_per_beat(self) -> int:
        return int(self.tokenizer.config.max_num_pos_per_beat)

    def ticks_per_beat(self, denominator: int) -> int:
        return self.ticks_per_quarter * 4 // denominator

    def ticks_per_position(self, denominator: int) -> int:
        return self.ticks_per_beat(denominator) // self.positions_per_beat

    @cached_property
    def num_positions(self) -> int:
        return sum(1 for t in self.ids if t.startswith("Position_"))

    @cached_property
    def tempos(self) -> np.ndarray:
        return np.asarray(self.tokenizer.tempos, dtype=np.float64)

    def tempo_index(self, qpm: float) -> int:
        """Index into ``tempos`` / ``tempo_ids`` of the bin a tempo of ``qpm`` is written as."""
        return nearest_tempo_bin(self.tempos, qpm)

    @cached_property
    def tempo_ids(self) -> list[int]:
        return [self.ids[f"Tempo_{t}"] for t in self.tokenizer.tempos]

    @cached_property
    def velocities(self) -> np.ndarray:
        return np.asarray(self.tokenizer.velocities, dtype=np.int64)

    @cached_property
    def time_signatures(self) -> set[tuple[int, int]]:
        return {tuple(ts) for ts in self.tokenizer.time_signatures}

    def durations(self, denominator: int) -> tuple[np.ndarray, list[int]]:
        """Duration token values in ticks (ascending) and their ids, for bars with this denominator."""
        return self._durations[denominator]

    @cached_property
    def _durations(self) -> dict[int, tuple[np.ndarray, list[int]]]:
        out = {}
        for denominator in TIME_SIGNATURE_DENOMINATORS:
            table = self.tokenizer._tpb_tokens_to_ticks[self.ticks_per_beat(denominator)]
            pairs = sorted((ticks, self.ids[f"Duration_{value}"]) for value, ticks in table.items())
            out[denominator] = (np.array([p[0] for p in pairs], dtype=np.int64), [p[1] for p in pairs])
        return out

    @cached_property
    def duration_ticks_by_id(self) -> dict[int, tuple[int, int, int]]:
        """Duration id -> (beats, positions, resolution): ticks depend on the bar's denominator."""
        out = {}
        for token, token_id in self.ids.items():
            if token.startswith("Duration_"):
                beats, pos, res = (int(x) for x in token.split("_", 1)[1].split("."))
                out[token_id] = (beats, pos, res)
        return out

"""Tempo relative to the mark: the shift of each bar, its inverse, and the samples built with it."""

from __future__ import annotations

import numpy as np

from instruct_museformer.data.dataset import load_dataset
from instruct_museformer.data.indexed import write_dataset
from instruct_museformer.data.mark_relative import MarkRelativeTempo
from instruct_museformer.tokens.specials import BAR, EOS
from instruct_museformer.tokens.tokenizer import build_tokenizer, vocab_tokens

TOKENS = vocab_tokens(build_tokenizer())
IDS = {t: i for i, t in enumerate(TOKENS)}
RELATIVE = MarkRelativeTempo.build(TOKENS)
TEMPOS = [TOKENS[i] for i in RELATIVE.ids]
NOTE = "Pitch_60 Velocity_63 Duration_1.0.16"


def _ids(names: str) -> list[int]:
    return [IDS[n] for n in names.split()]


def _bar(tempo: str | None, played: str | None = None) -> str:
    head = f"Position_0 {tempo} " if tempo else "Position_0 "
    return f"TimeSig_4/4 {head}{NOTE} Position_24 {played + ' ' if played else ''}{NOTE} Bar_None"


def test_each_bar_is_moved_by_the_mark_in_force_at_its_start():
    reference = RELATIVE.reference
    assert TEMPOS[reference] == "Tempo_101.83"  # the score tokenizer's tempo for a score without a mark
    score = _ids(" ".join([_bar("Tempo_70.86"), _bar(None), _bar("Tempo_146.34"), _bar(None)]))
    shifts = RELATIVE.bar_shifts(score)
    slow, fast = TEMPOS.index("Tempo_70.86"), TEMPOS.index("Tempo_146.34")
    assert shifts.tolist() == [reference - slow] * 2 + [reference - fast] * 2
    moved = RELATIVE.move(score, shifts)
    assert [TOKENS[t] for t in moved if TOKENS[t].startswith("Tempo_")] == ["Tempo_101.83", "Tempo_101.83"]
    assert RELATIVE.move(moved, shifts, sign=-1) == score
    unmarked = _ids(" ".join([_bar("Tempo_101.83"), _bar(None)]))
    assert RELATIVE.bar_shifts(unmarked).tolist() == [0, 0]
    assert RELATIVE.move(unmarked, RELATIVE.bar_shifts(unmarked)) == unmarked


def test_a_performance_is_read_as_a_ratio_to_the_mark_and_clamped_at_the_ends():
    score = _ids(_bar("Tempo_70.86"))
    shift = RELATIVE.bar_shifts(score)
    played = _ids(_bar("Tempo_76.19", "Tempo_10.0"))  # two bins above the mark, and the slowest bin
    names = [TOKENS[t] for t in RELATIVE.move(played, shift) if TOKENS[t].startswith("Tempo_")]
    assert names == [TEMPOS[RELATIVE.reference + 2], TEMPOS[max(0, int(shift[0]))]]


def test_samples_read_both_sides_relative_to_the_mark_of_their_bars(tmp_path):
    bars = [_bar("Tempo_70.86")] + [_bar(None)] * 4 + [_bar("Tempo_146.34")] + [_bar(None)] * 4
    score = [t for b in bars for t in _ids(b)]
    perf = [t for b in bars for t in _ids(_bar("Tempo_76.19"))]
    for k, lang in enumerate(("score", "perf")):
        write_dataset(tmp_path / f"train.score-perf.{lang}", [(score, perf)[k] + [EOS]], len(TOKENS))
    plain = load_dataset(tmp_path, "train", truncate=40, chunk=True)
    relative = load_dataset(tmp_path, "train", truncate=40, chunk=True, relative=RELATIVE)
    assert len(plain) == len(relative) > 2
    shifts = RELATIVE.bar_shifts(score)
    bar = 0
    for i in range(len(relative)):
        target = relative[i].target.tolist()
        n = target.count(BAR)
        expected = RELATIVE.move(plain[i].target.tolist(), shifts[bar:])
        assert target == expected
        # the performance's 76.19 is 2 bins above the first mark, and below the second by what lies between
        below = TEMPOS.index("Tempo_146.34") - TEMPOS.index("Tempo_76.19")
        tempos = {TOKENS[t] for t in target if TOKENS[t].startswith("Tempo_")}
        assert tempos <= {TEMPOS[RELATIVE.reference + 2], TEMPOS[RELATIVE.reference - below]}
        bar += n
    assert np.count_nonzero(np.array(score) == BAR) == bar

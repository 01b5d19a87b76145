"""The markings in force at a chunk's first bar: which are carried, where they are written, and the chunks."""

from __future__ import annotations

import pytest

from instruct_museformer.data.carried_markings import MAX_CARRIED_TOKENS, MarkingsInForce
from instruct_museformer.data.dataset import load_dataset
from instruct_museformer.data.indexed import write_dataset
from instruct_museformer.errors import UserError
from instruct_museformer.tokens.specials import BAR, EOS
from instruct_museformer.tokens.tokenizer import build_tokenizer, vocab_tokens

TOKENS = vocab_tokens(build_tokenizer())
IDS = {t: i for i, t in enumerate(TOKENS)}
CARRY = MarkingsInForce.build(TOKENS)


def _ids(names: str) -> list[int]:
    return [IDS[n] for n in names.split()]


def _names(ids: list[int]) -> str:
    return " ".join(TOKENS[i] for i in ids)


NOTE = "Pitch_60 Velocity_63 Duration_1.0.16"
OPENING = f"TimeSig_4/4 Position_0 Tempo_70.86 TempoWord_adagio Dyn_p {NOTE} Bar_None"
MIDDLE = f"TimeSig_4/4 Position_0 Dyn_sf {NOTE} Position_24 Dyn_f {NOTE} Bar_None"


def test_the_last_mark_word_and_level_are_in_force_and_impulses_are_not():
    score = _ids(OPENING + " " + MIDDLE)
    assert _names(CARRY.in_force(score, len(score))) == "Tempo_70.86 TempoWord_adagio Dyn_f"
    assert _names(CARRY.in_force(score, 2)) == ""  # nothing before the opening mark


def test_carried_markings_join_the_first_position_in_the_tokenizers_order():
    carried = _ids("Tempo_70.86 TempoWord_adagio Dyn_f")
    bar = _ids(f"TimeSig_3/4 Position_0 Dyn_pp Fermata_Note {NOTE} Bar_None")
    # the bar's own dynamic wins; Tempo first, then the directions by id
    assert _names(CARRY.open_bar(bar, carried)) == (
        f"TimeSig_3/4 Position_0 Tempo_70.86 TempoWord_adagio Dyn_pp Fermata_Note {NOTE} Bar_None")
    rest_first = _ids(f"TimeSig_4/4 Position_12 {NOTE} Bar_None")  # a bar opening with a rest
    assert _names(CARRY.open_bar(rest_first, carried)) == (
        f"TimeSig_4/4 Position_0 Tempo_70.86 TempoWord_adagio Dyn_f Position_12 {NOTE} Bar_None")
    assert CARRY.open_bar(bar, []) == bar


def test_a_window_from_the_middle_of_a_score_reads_as_if_the_score_began_there():
    score = _ids(OPENING + " " + MIDDLE + " " + MIDDLE)
    second = score.index(BAR) + 1
    window = CARRY.carry_into(score, second, score[second:])
    assert _names(window[: window.index(BAR) + 1]) == (
        f"TimeSig_4/4 Position_0 Tempo_70.86 TempoWord_adagio Dyn_p Dyn_sf {NOTE} Position_24 Dyn_f {NOTE} Bar_None")
    assert window[window.index(BAR) + 1 :] == score[score.index(BAR, second) + 1 :]
    assert CARRY.carry_into(score, 0, score) == score


def test_a_vocabulary_without_markings_cannot_carry_them():
    with pytest.raises(UserError, match="no score markings"):
        MarkingsInForce.build(vocab_tokens(build_tokenizer(score_markings=False)))


def test_every_chunk_after_the_first_starts_with_the_markings_in_force(tmp_path):
    bars = [OPENING] + [MIDDLE] * 9
    score = [t for b in bars for t in _ids(b)]
    perf = [t for b in bars for t in _ids(f"TimeSig_4/4 Position_0 Tempo_70.86 {NOTE} Bar_None")]
    for k, lang in enumerate(("score", "perf")):
        write_dataset(tmp_path / f"train.score-perf.{lang}", [(score, perf)[k] + [EOS]], len(TOKENS))
    limit = 40
    plain = load_dataset(tmp_path, "train", truncate=limit, chunk=True)
    carried = load_dataset(tmp_path, "train", truncate=limit, chunk=True, carry=CARRY)
    assert len(carried) >= len(plain) > 2
    assert carried[0].source.tolist()[: len(_ids(OPENING))] == _ids(OPENING)
    for i in range(1, len(carried)):
        source = carried[i].source.tolist()
        first_bar = _names(source[: source.index(BAR) + 1])
        assert first_bar.startswith("TimeSig_4/4 Position_0 Tempo_70.86 TempoWord_adagio Dyn_f Dyn_sf")
        assert len(source) <= limit and carried.sizes[i] >= len(source)
        assert source.count(BAR) == carried[i].target.tolist().count(BAR)
    # the performance side and the bars each chunk covers are those of the chunking
    assert sum(carried[i].target.tolist().count(BAR) for i in range(len(carried))) == len(bars)
    assert MAX_CARRIED_TOKENS == 4
    with pytest.raises(UserError, match="--chunk-train"):
        load_dataset(tmp_path, "train", truncate=limit, carry=CARRY)

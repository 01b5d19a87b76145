"""--draws: several sampled renderings of one score merged note by note into their mean."""

from pathlib import Path

import numpy as np
import pytest
import torch
from render_helpers import tiny_translation_renderer

from instruct_museformer.render.consensus import merge_renderings, onset_tempo, played_notes
from instruct_museformer.render.decode import SamplingOptions
from instruct_museformer.render.windows import render_token_bars
from instruct_museformer.tokens.score import tokenize_score
from instruct_museformer.tokens.tokenizer import Vocab

BACH = Path(__file__).resolve().parents[1] / "fixtures/nasap/Bach/Prelude/bwv_854/xml_score.musicxml"


@pytest.fixture(scope="module")
def draws():
    tokenizer, model, grammar, table = tiny_translation_renderer()
    score = tokenize_score(BACH, tokenizer)
    bars = [i for i, t in enumerate(score) if t == 4]
    score = score[: bars[3] + 1]  # the first four bars
    gen = torch.Generator().manual_seed(0)
    outputs = render_token_bars(model, [score] * 3, table, grammar, SamplingOptions(), gen, window_tokens=4096)
    return Vocab(tokenizer), score, outputs


def test_draws_play_score_notes_under_the_same_keys(draws):
    vocab, score, outputs = draws
    score_keys = set(played_notes(score, vocab).keys)
    shared = score_keys
    for out in outputs:
        played = played_notes(out, vocab)
        assert len(set(played.keys)) == len(played.keys) == len(played.onset)
        assert set(played.keys) <= score_keys  # bar k plays (a subset of) score bar k's notes, nothing else
        shared = shared & set(played.keys)
    assert len(shared) > 0.8 * len(score_keys)  # a random tiny model still plays most notes in every draw


def test_merge_is_the_note_wise_mean(draws):
    vocab, score, outputs = draws
    merged = merge_renderings(outputs, vocab, spread=False)
    played = [played_notes(out, vocab) for out in outputs]
    index = [{k: i for i, k in enumerate(p.keys)} for p in played]
    onset = dict(zip(merged.keys, merged.onset, strict=True))
    for key in merged.keys:
        present = [p.onset[ix[key]] for p, ix in zip(played, index, strict=True) if key in ix]
        assert onset[key] == pytest.approx(np.mean(present))  # a note some draw left out: the mean of the others
    velocities = sorted(n.velocity for n in merged.score.tracks[0].notes)
    means = sorted(int(np.clip(round(np.mean([p.velocity[ix[k]] for p, ix in zip(played, index, strict=True)
                                              if k in ix])), 1, 127)) for k in merged.keys)
    assert velocities == means
    assert merged.score.note_num() == len(set().union(*(p.keys for p in played)))
    assert 0 <= merged.nearest < len(outputs)


def test_one_draw_merges_to_itself_and_spread_is_kept(draws):
    vocab, _, outputs = draws
    alone = merge_renderings(outputs[:1], vocab)
    played = played_notes(outputs[0], vocab)
    assert sorted(n.velocity for n in alone.score.tracks[0].notes) == sorted(played.velocity.astype(int).tolist())
    assert sorted(round(n.time, 6) for n in alone.score.tracks[0].notes) == sorted(np.round(played.onset, 6).tolist())
    spread = merge_renderings(outputs, vocab, spread=True)
    flat = merge_renderings(outputs, vocab, spread=False)
    std = [np.std([n.velocity for n in m.score.tracks[0].notes]) for m in (spread, flat)]
    single = np.mean([np.std(played_notes(o, vocab).velocity) for o in outputs])
    assert std[0] == pytest.approx(single, rel=0.1)  # the spread of one draw (up to rounding and clipping)
    assert std[0] >= std[1]


def test_onset_tempo_of_a_deadpan_is_its_tempo(draws):
    vocab, score, _ = draws
    deadpan = played_notes(score, vocab)
    times, qpm = onset_tempo(score, vocab, deadpan.keys, deadpan.onset)
    assert len(qpm) > 4 and np.allclose(qpm, qpm[0], rtol=1e-3)


def test_the_merged_pedal_reaches_the_midi_file(draws, tmp_path):
    from symusic import Score

    vocab, _, outputs = draws
    merged = merge_renderings(outputs, vocab)
    pedals = merged.score.tracks[0].pedals
    assert len(pedals) > 0  # the random tiny model presses the pedal
    merged.score.dump_midi(str(tmp_path / "m.mid"))
    back = Score(str(tmp_path / "m.mid"))
    sustain = [c for c in back.tracks[0].controls if c.number == 64]
    assert len(sustain) == 2 * len(pedals)  # written as CC64 on/off, as decode_ids writes it

"""Features, deadpan and ceiling on the (n)ASAP fixtures (Bach BWV 854: 5 performances, Beethoven 21-2: 3)."""

from pathlib import Path

import numpy as np
import pytest

from instruct_museformer.evaluate.compare import METRICS, ceiling, compare, coverage_of
from instruct_museformer.evaluate.deadpan import deadpan_alignment, deadpan_note_array, write_deadpan_midi
from instruct_museformer.evaluate.features import (
    EvaluationInputError,
    align,
    extract_features,
    load_performance,
    load_score,
    read_alignment,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "nasap"
BACH = FIXTURES / "Bach" / "Prelude" / "bwv_854"
BACH_HUMANS = ["LuA01M", "MiyashitaM01M", "Ozaki01M", "Richardson01M", "WangA01M"]


@pytest.fixture(scope="module")
def bach_score():
    return load_score(BACH / "xml_score.musicxml")


@pytest.fixture(scope="module")
def bach_humans(bach_score):
    return [
        extract_features(
            bach_score,
            load_performance(BACH / f"{name}.mid"),
            read_alignment(BACH / f"{name}_note_alignments" / "note_alignment.tsv"),
        )
        for name in BACH_HUMANS
    ]


def test_score_is_unfolded_into_the_nasap_id_space(bach_score):
    assert bach_score.n_notes == 453
    assert "n6-1" in bach_score.index_of
    # 12/8: a bar is 6 quarter notes and has 12 notated (eighth-note) beats
    assert len(bach_score.bar_starts) == 24 and bach_score.bar_starts[1] == 6
    assert bach_score.beat_starts[1] - bach_score.beat_starts[0] == 0.5
    assert bach_score.bpm is None  # no tempo marking: the deadpan falls back to 100


def test_human_coverage_against_its_own_score_is_high(bach_humans):
    for features in bach_humans:
        assert features.coverage > 0.9
        assert features.added < 0.1 * features.score_notes


def test_parangonar_alignment_of_a_human_covers_the_score(bach_score):
    features = extract_features(bach_score, performance := load_performance(BACH / "LuA01M.mid"),
                                align(bach_score, performance))
    assert features.coverage > 0.9


def test_deadpan_is_mechanical(bach_score, tmp_path):
    notes = deadpan_note_array(bach_score)
    assert set(notes["velocity"].tolist()) == {64}
    path = tmp_path / "deadpan.mid"
    assert write_deadpan_midi(bach_score, path) == 100.0
    performance = load_performance(path)
    assert len(performance.pedal_times) == 0  # no pedal
    alignment = align(bach_score, performance)
    # the alignment known by construction is the one parangonar finds
    by_construction = deadpan_alignment(bach_score, performance, 100.0)
    matches = [{(a["score_id"], a["performance_id"]) for a in al if a["label"] == "match"}
               for al in (alignment, by_construction)]
    assert matches[0] == matches[1] and len(matches[0]) > 0.95 * bach_score.n_notes
    features = extract_features(bach_score, performance, by_construction)
    assert features.coverage > 0.95 and features.added == 0
    # every key of the score is in it: only unisons (two voices, one key) are missing from the plain coverage
    assert features.coverage_unisons_once == 1.0
    assert features.distinct_notes == len(set(zip(bach_score.note_array["onset_div"].tolist(),
                                                  bach_score.note_array["pitch"].tolist(), strict=True)))
    # constant IOI per beat: every eighth-note beat lasts 0.3 s, i.e. 0.6 s per quarter at 100 quarters/min
    _, log_seconds_per_quarter = features.tempo_beat
    assert len(log_seconds_per_quarter) > 200
    np.testing.assert_allclose(np.exp(log_seconds_per_quarter), 0.6, rtol=1e-3)
    np.testing.assert_allclose(np.exp(features.tempo_bar[1]), 0.6, rtol=1e-3)
    assert set(features.velocity[1].tolist()) == {64.0}
    assert set(features.samples["pedal"].tolist()) == {0.0}
    # a flat deadpan has no tempo or velocity correlation with anyone: undefined, not a fake number
    assert compare(features, [features])["vs_each"]["tempo_beat_r"] is None
    assert compare(features, [features])["vs_each"]["velocity_r"] is None


def test_a_performance_against_itself_is_perfect(bach_humans):
    result = compare(bach_humans[0], [bach_humans[0]])
    for mode in ("vs_each", "vs_pool"):
        for name in ("tempo_onset_r", "tempo_beat_r", "tempo_bar_r", "velocity_r", "articulation_r"):
            assert result[mode][name] == pytest.approx(1.0)
        assert result[mode]["velocity_mae"] == pytest.approx(0.0)
        for name in ("js_velocity", "js_ioi", "js_duration", "js_pedal"):
            assert result[mode][name] == pytest.approx(0.0)


def test_human_ceiling_on_bach_is_plausible(bach_humans):
    result = ceiling(bach_humans)
    assert result is not None and result["performances"] == 5
    assert set(result["vs_pool"]) == set(METRICS)
    pool, each = result["vs_pool"], result["vs_each"]
    assert all(v is not None and np.isfinite(v) for v in pool.values())
    # data.md's leave-one-out table: beat/bar-level tempo 0.7-0.97, velocity 0.75-0.8 on other pieces
    assert 0.6 < pool["tempo_beat_r"] < 1.0 and 0.6 < pool["tempo_bar_r"] < 1.0
    assert 0.5 < pool["velocity_r"] < 1.0
    assert 0.0 < pool["articulation_r"] < 1.0
    assert 0.0 < pool["velocity_mae"] < 20.0
    assert all(0.0 <= pool[m] < 0.5 for m in ("js_velocity", "js_ioi", "js_duration", "js_pedal"))
    # the mean of the others is a less noisy reference than any one of them
    assert pool["tempo_beat_r"] >= each["tempo_beat_r"]
    assert result["coverage"]["coverage"] > 0.9
    assert ceiling(bach_humans[:1]) is None


def test_coverage_fields(bach_humans):
    row = coverage_of(bach_humans[0])
    assert row["score_notes"] == 453 and row["matched"] + 0 <= 453
    assert row["coverage"] == pytest.approx(row["matched"] / 453, abs=1e-6)


def test_coverage_counts_a_unison_once(bach_score):
    """Two voices on one key (same onset and pitch) are one note of a MIDI file: found once, counted once."""
    na = bach_score.note_array[:3].copy()
    na["onset_div"] = [0, 0, 4]
    na["pitch"] = [60, 60, 64]
    na["id"] = ["a", "b", "c"]
    score = type(bach_score)(bach_score.path, na, bach_score.bar_starts, bach_score.beat_starts, None,
                             {"a": 0, "b": 1, "c": 2})
    assert score.unison_groups().tolist() == [0, 0, 1]
    one_key = load_performance(BACH / "LuA01M.mid")
    one_key.note_array = one_key.note_array[:2]
    ids = [str(i) for i in one_key.note_array["id"]]
    alignment = [{"label": "match", "score_id": "b", "performance_id": ids[0]},
                 {"label": "match", "score_id": "c", "performance_id": ids[1]},
                 {"label": "deletion", "score_id": "a"}]
    row = coverage_of(extract_features(score, one_key, alignment))
    assert row["coverage"] == pytest.approx(2 / 3) and row["coverage_unisons_once"] == 1.0


def test_bad_files_raise_input_errors(tmp_path, bach_score):
    with pytest.raises(EvaluationInputError, match="not found"):
        load_score(tmp_path / "missing.musicxml")
    corrupt = tmp_path / "corrupt.mid"
    corrupt.write_bytes(b"not a midi file at all")
    with pytest.raises(EvaluationInputError, match="corrupt.mid"):
        load_performance(corrupt)
    # an alignment made for another score version: its note ids are not in this score
    source = BACH / "LuA01M_note_alignments" / "note_alignment.tsv"
    lines = source.read_text().splitlines()
    foreign = [lines[0]] + [("n99999" + line[1:]) if line.startswith("n") else line for line in lines[1:]]
    (tmp_path / "foreign.tsv").write_text("\n".join(foreign) + "\n")
    with pytest.raises(EvaluationInputError, match="not in the score"):
        extract_features(bach_score, load_performance(BACH / "LuA01M.mid"), read_alignment(tmp_path / "foreign.tsv"))
    with pytest.raises(EvaluationInputError, match="not found"):
        read_alignment(tmp_path / "none.tsv")


def test_a_rendering_with_missing_and_extra_notes(bach_score, bach_humans, tmp_path):
    """Renderings drop and add notes: coverage and added count must show it, metrics still compare."""
    import partitura as pt
    from partitura.performance import PerformedPart

    source = load_performance(BACH / "LuA01M.mid").note_array
    kept = source[np.arange(len(source)) % 10 != 0]  # drop every 10th note
    extra = kept[:30].copy()
    extra["pitch"] = 100  # 30 notes far above the piece's range
    extra["id"] = [f"x{i}" for i in range(len(extra))]
    notes = np.concatenate([kept, extra])
    notes["id"] = [f"n{i}" for i in range(len(notes))]
    path = tmp_path / "rendering.mid"
    pt.save_performance_midi(PerformedPart.from_note_array(notes), str(path))
    performance = load_performance(path)
    features = extract_features(bach_score, performance, align(bach_score, performance))
    assert 0.8 < features.coverage < 0.92  # about 90% of the human's 98% coverage
    assert features.added >= 30
    result = compare(features, bach_humans[1:])
    assert result["vs_pool"]["tempo_bar_r"] > 0.8  # still the same interpretation as LuA01M
    assert result["vs_pool"]["velocity_r"] > 0.5

"""Teacher-forced diagnosis: per-class losses and expected-value correlations from logits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from instruct_museformer.evaluate.diagnose import ClassTable, PairDiagnosis, diagnose_chunk, summarize
from instruct_museformer.tokens.tokenizer import Vocab, build_tokenizer

VOCAB = Vocab(build_tokenizer())
IDS = VOCAB.ids
VELOCITIES = [t for t in VOCAB.tokens if t.startswith("Velocity_")]


def _performance(velocities: list[str], positions: list[int]) -> list[int]:
    out = [IDS["TimeSig_4/4"]]
    for pos, vel in zip(positions, velocities, strict=True):
        out += [IDS[f"Position_{pos}"], IDS["Pitch_60"], IDS[vel], IDS["Duration_1.0.16"]]
    return out + [4, 2]


def test_a_model_that_knows_the_velocities_correlates_fully_and_the_losses_split_by_class():
    table = ClassTable.of(VOCAB)
    rng = np.random.default_rng(0)
    velocities = [VELOCITIES[i] for i in rng.integers(4, 28, size=12)]
    target = _performance(velocities, [0, 12, 24, 36, 48, 60, 72, 84, 96, 108, 120, 132])
    source = _performance(["Velocity_63"] * 12, [0, 12, 24, 36, 48, 60, 72, 84, 96, 108, 120, 132])
    logits = torch.full((len(target), len(VOCAB.tokens)), -5.0)
    for i, t in enumerate(target):
        logits[i, t] = 5.0  # sure of every true token, neighbours of the velocity a little likely
        if VOCAB.tokens[t].startswith("Velocity_"):
            logits[i, t - 1] = logits[i, t + 1] = 2.0
    diag = PairDiagnosis(0)
    diagnose_chunk(logits, target, source, table, VOCAB, diag)
    out = summarize({0: diag}, {0: "piece"})
    assert out["correlation"]["Velocity"]["r_expected"] == pytest.approx(1.0, abs=1e-3)
    assert out["correlation"]["Velocity"]["r_argmax"] == pytest.approx(1.0)
    assert out["token_share"]["Velocity"] == pytest.approx(12 / len(target))
    assert out["loss_bits"]["Velocity"] > out["loss_bits"]["Pitch"] > 0  # the spread mass costs the velocity loss
    # onset offsets: performance positions are the score's, so every offset is 0 (no variance -> r undefined)
    assert all(row[0] == 0 for row in diag.series["Onset offset"]) and len(diag.series["Onset offset"]) == 12
    assert math.isnan(out["correlation"].get("Onset offset", {}).get("r_expected", math.nan))


def test_onset_offsets_follow_the_nearest_score_note():
    table = ClassTable.of(VOCAB)
    target = _performance(["Velocity_63"] * 3, [2, 13, 40])
    source = _performance(["Velocity_63"] * 3, [0, 12, 48])
    logits = torch.zeros((len(target), len(VOCAB.tokens)))
    for i, t in enumerate(target):
        logits[i, t] = 20.0
    diag = PairDiagnosis(0)
    diagnose_chunk(logits, target, source, table, VOCAB, diag)
    truth = [row[0] for row in diag.series["Onset offset"]]
    assert truth == [2, 1, -8]
    assert [round(row[1], 3) for row in diag.series["Onset offset"]] == truth


def test_imf_diagnose_end_to_end_on_a_tiny_checkpoint(tmp_path):
    """The command runs a real (tiny, random) checkpoint over a data-bin split and writes the figures."""
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "render"))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
    from render_helpers import make_checkpoint
    from train_helpers import make_data_bin

    from instruct_museformer.cli import main as imf

    data_bin = make_data_bin(tmp_path, n_train=1, n_valid=4, n_test=1)
    checkpoint = make_checkpoint(tmp_path / "model")
    out = tmp_path / "diag.json"
    assert imf(["diagnose", str(data_bin), "--path", str(checkpoint), "--chunk-tokens", "64", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["pairs"] == 4 and result["pieces"] == 4
    assert set(result["loss_bits"]) >= {"Velocity", "Pitch", "Position", "all"}
    assert result["correlation"]["Velocity"]["pieces"] >= 1 and result["history_noise"] == 0.0
    noisy = tmp_path / "noisy.json"  # the same pairs with a moved history: other losses, the same targets
    assert imf(["diagnose", str(data_bin), "--path", str(checkpoint), "--chunk-tokens", "64", "--history-noise", "1",
                "--out", str(noisy)]) == 0
    moved = json.loads(noisy.read_text())
    assert moved["token_share"] == result["token_share"] and moved["loss_bits"] != result["loss_bits"]
    assert imf(["diagnose", str(data_bin), "--path", str(checkpoint), "--history-noise", "2"]) == 2
    fed = tmp_path / "fed.json"  # the history the render writes: the model's own expected bins
    assert imf(["diagnose", str(data_bin), "--path", str(checkpoint), "--chunk-tokens", "64", "--self-feed", "1",
                "--out", str(fed)]) == 0
    own = json.loads(fed.read_text())
    assert own["self_feed"] == 1.0 and own["token_share"] == result["token_share"]
    assert own["loss_bits"]["Velocity"] != result["loss_bits"]["Velocity"]
    assert imf(["diagnose", str(data_bin), "--path", str(checkpoint), "--self-feed", "2"]) == 2
    assert imf(["diagnose", str(tmp_path / "missing"), "--path", str(checkpoint)]) == 2

"""imf generate: fairseq-style S/T/H/D/P lines for a data-bin split, and unconditional LM sampling."""

import pytest
from render_helpers import make_checkpoint

from instruct_museformer.cli import main as imf
from instruct_museformer.data.dictionary import Dictionary
from instruct_museformer.data.indexed import write_dataset
from instruct_museformer.tokens.specials import BAR
from instruct_museformer.tokens.tokenizer import build_tokenizer, save_tokenizer, vocab_tokens


@pytest.fixture(scope="module")
def data_bin(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    tokenizer = build_tokenizer()
    tokens = vocab_tokens(tokenizer)
    ids = {t: i for i, t in enumerate(tokens)}
    data = root / "data-bin"
    data.mkdir()
    save_tokenizer(tokenizer, data / "tokenizer.json")
    for lang in ("score", "perf"):
        Dictionary.numeric(len(tokens)).save(data / f"dict.{lang}.txt")
    pieces = []
    for n_bars in (2, 3, 1):
        piece = []
        for b in range(n_bars):
            piece += [ids["TimeSig_3/4"], ids[f"Position_{12 * b}"], ids[f"Pitch_{60 + b}"], ids["Velocity_63"],
                      ids["Duration_1.0.16"], BAR]
        pieces.append(piece)
    for lang in ("score", "perf"):
        write_dataset(data / f"test.score-perf.{lang}", [p + [2] for p in pieces], len(tokens))
    return data


def test_generate_translation_lines(data_bin, tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "ck")
    results = tmp_path / "results"
    code = imf(["generate", str(data_bin), "--path", str(ckpt), "--gen-subset", "test", "--batch-size", "2",
                "--results-path", str(results), "--cpu", "--seed", "2"])
    assert code == 0
    out = capsys.readouterr().out.splitlines()
    written = (results / "generate-test.txt").read_text().splitlines()
    assert written[:-1] == out
    by_kind = {}
    for line in out:
        kind, i = line.split("\t")[0].split("-")
        by_kind.setdefault(kind, {})[int(i)] = line.split("\t")
    assert sorted(by_kind) == ["D", "H", "P", "S", "T"] and sorted(by_kind["H"]) == [0, 1, 2]
    for i, fields in by_kind["H"].items():
        hyp = [int(t) for t in fields[2].split()]
        src = [int(t) for t in by_kind["S"][i][1].split()]
        assert hyp.count(BAR) == src.count(BAR)  # the hypothesis has the score's bars
        assert float(fields[1]) <= 0.0
        assert len(by_kind["P"][i][1].split()) == len(hyp) + 1  # + EOS


def test_generate_language_model(data_bin, tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "lm", task="language_modeling")
    code = imf(["generate", str(data_bin), "--path", str(ckpt), "--task", "museformer_language_modeling",
                "--num-samples", "3", "--min-len", "8", "--max-len-b", "40", "--cpu"])
    assert code == 0
    hyps = [line.split("\t")[2].split() for line in capsys.readouterr().out.splitlines() if line.startswith("H-")]
    assert len(hyps) == 3 and all(7 <= len(h) <= 40 for h in hyps)


def test_generate_refuses_beam_and_wrong_task(data_bin, tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "ck2")
    assert imf(["generate", str(data_bin), "--path", str(ckpt), "--beam", "5"]) == 2
    assert "only --beam 1" in capsys.readouterr().err
    assert imf(["generate", str(data_bin), "--path", str(ckpt), "--task", "museformer_language_modeling"]) == 2
    assert "translation checkpoint" in capsys.readouterr().err


def test_generate_score_constrained(data_bin, tmp_path, capsys):
    """--score-constrained: every hypothesis bar plays the source bar's pitches."""
    from collections import Counter

    from instruct_museformer.render.windows import split_bars

    ckpt = make_checkpoint(tmp_path / "ck3")
    assert imf(["generate", str(data_bin), "--path", str(ckpt), "--cpu", "--score-constrained"]) == 0
    out = capsys.readouterr().out.splitlines()
    src = {line.split("\t")[0][2:]: [int(t) for t in line.split("\t")[1].split()] for line in out if line[0] == "S"}
    hyp = {line.split("\t")[0][2:]: [int(t) for t in line.split("\t")[2].split()] for line in out if line[0] == "H"}
    pitches = build_tokenizer().vocab
    is_pitch = {i for t, i in pitches.items() if t.startswith("Pitch_")}
    for i, s in src.items():
        for s_bar, h_bar in zip(split_bars(s), split_bars(hyp[i]), strict=True):
            assert Counter(t for t in h_bar if t in is_pitch) == Counter(t for t in s_bar if t in is_pitch)

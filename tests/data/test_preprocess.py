"""`imf preprocess` end to end on small token files (translation, --only-source, built dicts, errors)."""

import random
import struct
from pathlib import Path

import numpy as np
import pytest

from instruct_museformer.cli import main as imf
from instruct_museformer.data.indexed import MMapIndexedDataset
from instruct_museformer.data.preprocess import PreprocessOptions, find_offsets, preprocess


def _piece(rng: random.Random, bars: int, vocab: int) -> str:
    bar = lambda: " ".join(str(rng.randrange(5, vocab)) for _ in range(rng.randint(1, 6))) + " 4"  # noqa: E731
    return " ".join(bar() for _ in range(bars))


def _corpus(root: Path, vocab: int = 60, sizes=(("train", 12), ("val", 3), ("test", 3))) -> dict[str, list[list[str]]]:
    """Token files {split}.score/.perf and data/meta/our_dict.txt + tokenizer.json, as imf tokenize writes them."""
    rng = random.Random(7)
    (root / "tokens").mkdir(parents=True)
    (root / "meta").mkdir()
    lines: dict[str, list[list[str]]] = {}
    for split, n in sizes:
        bars = [rng.randint(1, 5) for _ in range(n)]
        pair = [[_piece(rng, b, vocab) for b in bars] for _ in ("score", "perf")]
        for lang, side in zip(("score", "perf"), pair, strict=True):
            (root / "tokens" / f"{split}.{lang}").write_text("\n".join(side) + "\n")
        lines[split] = pair
    (root / "meta" / "our_dict.txt").write_text("".join(f"{i} 1\n" for i in range(vocab)))
    (root / "meta" / "tokenizer.json").write_text('{"tokenization": "REMI"}')
    return lines


def _run(capsys, *args: str) -> tuple[int, str]:
    code = imf(["preprocess", *args])
    return code, capsys.readouterr().err


def _translation_args(root: Path, dest: Path, *extra: str) -> list[str]:
    t = root / "tokens"
    d = root / "meta" / "our_dict.txt"
    return ["--source-lang", "score", "--target-lang", "perf", "--trainpref", f"{t}/train", "--validpref",
            f"{t}/val", "--testpref", f"{t}/test", "--destdir", str(dest), "--srcdict", str(d), "--tgtdict", str(d),
            *extra]


def _ids(line: str) -> list[int]:
    return [int(x) for x in line.split()]


def test_translation_end_to_end(tmp_path, capsys):
    lines = _corpus(tmp_path)
    dest = tmp_path / "data-bin" / "instruct_museformer"
    code, err = _run(capsys, *_translation_args(tmp_path, dest))
    assert code == 0, err
    names = sorted(p.name for p in dest.iterdir())
    expected = {"dict.score.txt", "dict.perf.txt", "preprocess.log", "tokenizer.json"}
    for split in ("train", "valid", "test"):
        expected |= {f"{split}.score-perf.{lang}.{ext}" for lang in ("score", "perf") for ext in ("bin", "idx")}
    assert names == sorted(expected)
    assert (dest / "dict.score.txt").read_text() == (tmp_path / "meta" / "our_dict.txt").read_text()
    for split, name in (("train", "train"), ("val", "valid"), ("test", "test")):
        for k, lang in enumerate(("score", "perf")):
            ds = MMapIndexedDataset(dest / f"{name}.score-perf.{lang}")
            assert [ds[i].tolist() for i in range(len(ds))] == [_ids(x) + [2] for x in lines[split][k]]
    raw = (dest / "train.score-perf.perf.idx").read_bytes()
    assert raw[:9] == b"MMIDIDX\x00\x00" and raw[17] == 8 and struct.unpack("<Q", raw[18:26]) == (12,)
    assert "[perf]" in (dest / "preprocess.log").read_text()


def test_workers_split_the_lines_and_give_the_same_bytes(tmp_path, capsys):
    _corpus(tmp_path, sizes=(("train", 40),))
    t, d = tmp_path / "tokens", tmp_path / "meta" / "our_dict.txt"
    common = ["-s", "score", "-t", "perf", "--trainpref", f"{t}/train", "--srcdict", str(d), "--tgtdict", str(d)]
    assert _run(capsys, *common, "--destdir", str(tmp_path / "one"))[0] == 0
    assert len(find_offsets(t / "train.perf", chunk_bytes=64)) > 3  # several chunks, cut at line starts
    import instruct_museformer.data.preprocess as pre

    old = pre.CHUNK_BYTES
    pre.CHUNK_BYTES = 64  # many small chunks over 2 worker processes
    try:
        assert _run(capsys, *common, "--destdir", str(tmp_path / "two"), "--workers", "2")[0] == 0
    finally:
        pre.CHUNK_BYTES = old
    for name in ("train.score-perf.score", "train.score-perf.perf"):
        for ext in ("bin", "idx"):
            one, two = (tmp_path / run / f"{name}.{ext}" for run in ("one", "two"))
            assert one.read_bytes() == two.read_bytes()


def test_only_source_follows_fairseq_naming(tmp_path, capsys):
    lines = _corpus(tmp_path, sizes=(("train", 4), ("val", 2)))
    t, d = tmp_path / "tokens", tmp_path / "meta" / "our_dict.txt"
    # Museformer's LM data-bin: no language -> {pref} is read, {split}.bin/.idx and dict.txt written
    code, err = _run(capsys, "--only-source", "--trainpref", f"{t}/train.perf", "--validpref", f"{t}/val.perf",
                     "--srcdict", str(d), "--destdir", str(tmp_path / "lm"))
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "lm").iterdir()) == [
        "dict.txt", "preprocess.log", "tokenizer.json", "train.bin", "train.idx", "valid.bin", "valid.idx"]
    assert MMapIndexedDataset(tmp_path / "lm" / "valid")[1].tolist() == _ids(lines["val"][1][1]) + [2]
    # with -s X fairseq reads {pref}.X and names the output {split}.X-None.X
    code, err = _run(capsys, "--only-source", "-s", "perf", "--trainpref", f"{t}/train", "--srcdict", str(d),
                     "--destdir", str(tmp_path / "lm2"))
    assert code == 0, err
    assert {"dict.perf.txt", "train.perf-None.perf.bin", "train.perf-None.perf.idx"} <= {
        p.name for p in (tmp_path / "lm2").iterdir()}


def test_built_dictionary_keeps_ids_and_refuses_to_overwrite(tmp_path):
    _corpus(tmp_path, vocab=30, sizes=(("train", 6),))
    opts = PreprocessOptions(source_lang="score", target_lang="perf", trainpref=str(tmp_path / "tokens" / "train"),
                             destdir=str(tmp_path / "bin"), joined_dictionary=True)
    preprocess(opts, progress=False)
    counts = [int(line.split()[1]) for line in (tmp_path / "bin" / "dict.score.txt").read_text().splitlines()]
    assert [line.split()[0] for line in (tmp_path / "bin" / "dict.perf.txt").read_text().splitlines()] == [
        str(i) for i in range(len(counts))]
    assert len(counts) % 8 == 0 and counts[2] == 12  # one EOS per line of both files
    text = " ".join((tmp_path / "tokens" / f"train.{lang}").read_text() for lang in ("score", "perf"))
    assert counts[4] == text.split().count("4")
    with pytest.raises(Exception, match="already exists"):
        preprocess(opts, progress=False)


def test_unknown_token_is_an_error_and_leaves_nothing(tmp_path, capsys):
    _corpus(tmp_path)
    lines = (tmp_path / "tokens" / "test.perf").read_text().splitlines()
    lines[1] = lines[1] + " 60 4"
    (tmp_path / "tokens" / "test.perf").write_text("\n".join(lines) + "\n")
    dest = tmp_path / "out" / "bin"
    code, err = _run(capsys, *_translation_args(tmp_path, dest))
    assert code == 2
    assert f"{tmp_path}/tokens/test.perf:2: token" in err and "'60' is not in the dictionary" in err
    assert not (tmp_path / "out").exists()  # created by the run, removed with everything in it
    existing = tmp_path / "keep"
    existing.mkdir()
    (existing / "note.txt").write_text("mine")
    assert _run(capsys, *_translation_args(tmp_path, existing))[0] == 2
    assert [p.name for p in existing.iterdir()] == ["note.txt"]


def test_user_errors_are_one_line(tmp_path, capsys):
    _corpus(tmp_path)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    code, err = _run(capsys, *_translation_args(tmp_path, blocker / "bin"))
    assert code == 2 and "cannot create it" in err and str(blocker / "bin") in err
    code, err = _run(capsys, *_translation_args(tmp_path, blocker))
    assert code == 2 and "not a folder" in err
    args = _translation_args(tmp_path, tmp_path / "bin")
    args[args.index("--srcdict") + 1] = str(tmp_path / "meta" / "missing.txt")
    code, err = _run(capsys, *args)
    assert code == 2 and "missing.txt: dictionary file not found" in err
    code, err = _run(capsys, *_translation_args(tmp_path, tmp_path / "bin"), "--trainpre", "x")
    assert code == 2 and "unknown option --trainpre; did you mean --trainpref?" in err
    code, err = _run(capsys, *_translation_args(tmp_path, tmp_path / "bin"), "--joined-dictionry")
    assert code == 2 and "did you mean --joined-dictionary?" in err
    code, err = _run(capsys, *_translation_args(tmp_path, tmp_path / "bin"), "--dataset-impl", "raw")
    assert code == 2 and "only 'mmap'" in err
    code, err = _run(capsys, "-s", "score", "-t", "perf", "--trainpref", str(tmp_path / "tokens" / "nope"))
    assert code == 2 and "nope.score: input token file not found" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "bin").exists()


def test_fixture_sized_run_is_fast(tmp_path):
    lines = _corpus(tmp_path, vocab=400, sizes=(("train", 8), ("val", 2), ("test", 2)))
    t = tmp_path / "tokens"
    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):  # fixture-like lengths: a few thousand tokens a piece
        for lang in ("score", "perf"):
            rows = [" ".join(map(str, rng.integers(5, 400, 3000))) + " 4" for _ in lines[split][0]]
            (t / f"{split}.{lang}").write_text("\n".join(rows) + "\n")
    dictionary = str(tmp_path / "meta" / "our_dict.txt")
    report = preprocess(PreprocessOptions(
        source_lang="score", target_lang="perf", trainpref=f"{t}/train", validpref=f"{t}/val", testpref=f"{t}/test",
        destdir=str(tmp_path / "bin"), srcdict=dictionary, tgtdict=dictionary), progress=False)
    assert sum(s.sequences for s in report.splits) == 24 and report.seconds < 5


def test_pairs_with_different_bar_counts_are_reported(tmp_path, capsys):
    _corpus(tmp_path, sizes=(("train", 3),))
    perf = (tmp_path / "tokens" / "train.perf").read_text().splitlines()
    perf[1] += " 9 4"  # one bar more than its score
    (tmp_path / "tokens" / "train.perf").write_text("\n".join(perf) + "\n")
    d = str(tmp_path / "meta" / "our_dict.txt")
    opts = PreprocessOptions(source_lang="score", target_lang="perf", trainpref=str(tmp_path / "tokens" / "train"),
                             destdir=str(tmp_path / "bin"), srcdict=d, tgtdict=d)
    report = preprocess(opts, progress=False)
    assert len(report.warnings) == 1
    assert "1 pairs differ in their number of Bar tokens, first at line 2" in report.warnings[0]
    assert "line 2" in capsys.readouterr().err
    assert "first at line 2" in (tmp_path / "bin" / "preprocess.log").read_text()


def test_read_only_destdir_is_a_user_error(tmp_path, capsys, monkeypatch):
    _corpus(tmp_path)
    import instruct_museformer.data.preprocess as pre

    def refuse(*args, **kwargs):  # what a read-only folder does (as root, chmod would not stop us)
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(pre.tempfile, "mkdtemp", refuse)
    dest = tmp_path / "new" / "bin"
    code, err = _run(capsys, *_translation_args(tmp_path, dest))
    assert code == 2 and f"--destdir {dest}: not writable (Permission denied)" in err
    assert not (tmp_path / "new").exists()

"""The corpus driver: pair discovery, skipping bad pairs with reasons, resuming from the cache."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from instruct_museformer.cli import main as imf
from instruct_museformer.data.corpus import Pair, manifest_pairs, nasap_pairs, tokenize_corpus
from instruct_museformer.errors import UserError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
NASAP = FIXTURES / "nasap"
BACH = NASAP / "Bach" / "Prelude" / "bwv_854"
BEETHOVEN = NASAP / "Beethoven" / "Piano_Sonatas" / "21-2"


def test_nasap_pairs_use_the_split_and_robust_alignments():
    pairs = nasap_pairs(NASAP)
    assert len(pairs) == 8
    assert [p.split for p in pairs].count("train") == 5
    assert {p.split for p in pairs} == {"train", "val", "test"}
    for pair in pairs:
        assert pair.score.is_file() and pair.performance.is_file()
        assert pair.alignment is not None and pair.alignment.is_file()
        assert pair.annotations is not None and pair.annotations.is_file()


def test_nasap_pairs_without_a_vouched_alignment_or_a_musicxml_score(tmp_path: Path):
    """A non-robust row keeps its note alignment as an unverified one (tried where the annotations fail, and
    parangonar after it); a training row whose MusicXML (n)ASAP could not ship is paired through its MIDI
    score, a test row is not."""
    rows = (NASAP / "nasap_metadata_shipped.csv").read_text().splitlines()
    header = rows[0].split(",")
    robust, xml, split = header.index("robust_note_alignment"), header.index("xml_score"), header.index("acpas_split")
    edited = [rows[0]]
    for k, line in enumerate(rows[1:]):
        cells = line.split(",")
        if k == 0:
            cells[robust] = "0.0"
        if k == 1 or cells[split] == "test":
            cells[xml] = cells[xml].replace("xml_score.musicxml", "absent.musicxml")
        edited.append(",".join(cells))
    metadata = tmp_path / "metadata.csv"
    metadata.write_text("\n".join(edited) + "\n")
    pairs = nasap_pairs(NASAP, metadata)
    assert pairs[0].alignment is None and pairs[0].unverified_alignment is not None
    assert pairs[0].unverified_alignment.name == "note_alignment.tsv" and pairs[0].unverified_alignment.is_file()
    assert pairs[0].auto_align and not any(p.auto_align for p in pairs[1:])  # parangonar after both
    assert pairs[0].annotations is not None
    assert pairs[1].score.name == "midi_score.mid" and pairs[1].split == "train"
    assert pairs[1].alignment is None and pairs[1].unverified_alignment is None
    assert pairs[1].score_annotations is not None and pairs[1].score_annotations.is_file()
    tests = [p for p in pairs if p.split == "test"]
    assert tests and all(p.score.name == "absent.musicxml" for p in tests)
    assert all(p.unverified_alignment is None for k, p in enumerate(pairs) if k > 0)


def test_nasap_needs_a_split_column(tmp_path: Path):
    (tmp_path / "metadata.csv").write_text("composer,folder\nBach,Bach/x\n")
    with pytest.raises(UserError, match="acpas_split"):
        nasap_pairs(tmp_path)


def test_manifest_resolves_paths_and_alignment_kinds(tmp_path: Path):
    manifest = tmp_path / "pairs.csv"
    manifest.write_text(
        "score,performance,alignment,split\n"
        "a.musicxml,a.mid,a_note_alignments/note_alignment.tsv,train\n"
        "b.musicxml,b.mid,b.match,validation\n"
        "c.musicxml,c.mid,c_annotations.txt,test\n"
    )
    a, b, c = manifest_pairs(manifest)
    assert a.alignment == tmp_path / "a_note_alignments/note_alignment.tsv" and a.split == "train"
    assert b.match == tmp_path / "b.match" and b.alignment is None and b.split == "val"
    assert c.annotations == tmp_path / "c_annotations.txt" and c.split == "test"


def test_manifest_rejects_a_bad_split(tmp_path: Path):
    manifest = tmp_path / "pairs.csv"
    manifest.write_text("score,performance,alignment,split\na.xml,a.mid,,training\n")
    with pytest.raises(UserError, match=r"pairs.csv:2: split"):
        manifest_pairs(manifest)


def _small_corpus(tmp_path: Path) -> list[Pair]:
    """Two good pairs, a truncated MIDI and a text file named .mid."""
    bad = tmp_path / "bad"
    bad.mkdir()
    truncated = bad / "truncated.mid"
    truncated.write_bytes((BACH / "WangA01M.mid").read_bytes()[:200])
    not_midi = bad / "not_midi.mid"
    not_midi.write_text("this is not a MIDI file\n")
    alignment = BACH / "WangA01M_note_alignments" / "note_alignment.tsv"
    score = BACH / "xml_score.musicxml"
    return [
        Pair("train", score, BACH / "WangA01M.mid", alignment=alignment),
        Pair("train", score, truncated, alignment=alignment),
        Pair("val", score, not_midi, alignment=alignment),
        Pair("test", BEETHOVEN / "xml_score.musicxml", BEETHOVEN / "KimSY03.mid",
             alignment=BEETHOVEN / "KimSY03_note_alignments" / "note_alignment.tsv"),
        Pair("test", tmp_path / "missing.musicxml", BEETHOVEN / "KimSY03.mid"),
    ]


def test_tokenize_corpus_writes_paired_lines_and_reports_skips(tmp_path: Path):
    pairs = _small_corpus(tmp_path)
    out, meta = tmp_path / "tokens", tmp_path / "meta"
    report = tokenize_corpus(pairs, out, meta, workers=2, progress=False)
    assert report.pairs == {"train": 1, "val": 0, "test": 1}
    assert sum(report.skipped["train"].values()) == 1 and sum(report.skipped["val"].values()) == 1
    assert report.skipped["test"] == {"missing file": 1}
    for split in ("train", "test"):
        score_lines = (out / f"{split}.score").read_text().splitlines()
        perf_lines = (out / f"{split}.perf").read_text().splitlines()
        assert len(score_lines) == len(perf_lines) == 1
        score_ids = [int(t) for t in score_lines[0].split(" ")]
        perf_ids = [int(t) for t in perf_lines[0].split(" ")]
        assert score_ids.count(4) == perf_ids.count(4) > 0  # bar k pairs with bar k
        assert score_ids[-1] == perf_ids[-1] == 4  # Bar closes the last bar
    assert (out / "val.score").read_text() == ""
    dictionary = (meta / "our_dict.txt").read_text().splitlines()
    assert dictionary[:5] == ["0 1", "1 1", "2 1", "3 1", "4 1"]
    assert all(line == f"{k} 1" for k, line in enumerate(dictionary))
    assert (meta / "tokenizer.json").is_file()
    skipped = (meta / "skipped.tsv").read_text().splitlines()
    assert len(skipped) == 1 + 3 and any("\tmissing file\t" in row for row in skipped)
    saved = json.loads((meta / "tokenize_report.json").read_text())
    assert saved["pairs"] == report.pairs
    # score markings: each tokenized pair's score once, as partitura parsed them and as tokens
    from collections import Counter

    from instruct_museformer.tokens.score import load_score

    parsed: Counter = Counter()
    for score in (BACH / "xml_score.musicxml", BEETHOVEN / "xml_score.musicxml"):
        parsed.update(load_score(score).markings.parsed)
    assert {kind: n["parsed"] for kind, n in saved["markings"].items()} == dict(parsed)
    assert saved["marking_scores"] == 2
    assert saved["markings"]["slur"]["tokenized"] == saved["markings"]["slur"]["parsed"] > 0

    # A second run resumes from the cache and writes identical files.
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    again = tokenize_corpus(pairs, out, meta, workers=2, progress=False)
    assert again.cached == len(pairs)
    assert again.markings == report.markings  # the counts come back from the cache
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_unwritable_output_folder_is_a_user_error(tmp_path: Path):
    if os.geteuid() == 0:
        blocker = tmp_path / "file"
        blocker.write_text("")
        out = blocker / "tokens"  # a folder under a regular file cannot exist, even for root
    else:
        out = tmp_path / "ro"
        out.mkdir()
        out.chmod(0o500)
    with pytest.raises(UserError, match="cannot write"):
        tokenize_corpus(_small_corpus(tmp_path)[:1], out, tmp_path / "meta", workers=1, progress=False)


def test_cli_tokenize_nasap_fixture_subset(tmp_path: Path, capsys):
    root = tmp_path / "nasap"
    shutil.copytree(NASAP, root)
    code = imf(["tokenize", "--corpus", "nasap", "--root", str(root), "--out", str(tmp_path / "t"),
                "--meta", str(tmp_path / "m"), "--workers", "2", "--limit", "1"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "train: 1 pairs tokenized, 0 skipped" in printed
    assert len((tmp_path / "t" / "train.perf").read_text().splitlines()) == 1


def test_cli_tokenize_missing_root_exits_2(tmp_path: Path, capsys):
    assert imf(["tokenize", "--corpus", "nasap", "--root", str(tmp_path / "nope")]) == 2
    assert "no such file" in capsys.readouterr().err


def _performance_notes(ids: list[int], tokens: list[str]) -> list[tuple[int, str, str, str, str]]:
    """(bar, Position, Pitch, Velocity, Duration) of every note of a performance token sequence."""
    bar, position, notes = 0, "", []
    for i, t in enumerate(ids):
        token = tokens[t]
        if token == "Bar_None":
            bar += 1
        elif token.startswith("Position_"):
            position = token
        elif token.startswith("Pitch_"):
            notes.append((bar, position, token, tokens[ids[i + 1]], tokens[ids[i + 2]]))
    return notes


def test_manifest_pair_without_alignment_is_aligned_by_parangonar(tmp_path: Path, capsys):
    """A fixture pair with its alignment removed tokenizes as with its (n)ASAP alignment; a pair of two different
    pieces is skipped below the threshold; the alignment is cached beside the token cache and not redone."""
    from collections import Counter

    from instruct_museformer.tokens.tokenizer import Vocab, load_tokenizer

    score = BACH / "xml_score.musicxml"
    manifest = tmp_path / "pairs.csv"
    manifest.write_text(
        "score,performance,alignment,split\n"
        f"{score},{BACH / 'LuA01M.mid'},,train\n"
        f"{score},{BACH / 'LuA01M.mid'},{BACH / 'LuA01M_note_alignments' / 'note_alignment.tsv'},test\n"
        f"{score},{BEETHOVEN / 'KimSY03.mid'},,val\n"
    )
    out, meta = tmp_path / "tokens", tmp_path / "meta"
    argv = ["tokenize", "--manifest", str(manifest), "--out", str(out), "--meta", str(meta), "--workers", "1"]
    assert imf(argv) == 0
    printed = capsys.readouterr().out
    matched = {name: float(x) for name, x in re.findall(r"aligned with parangonar: \S+/(\w+)\.mid: ([\d.]+)%", printed)}
    assert matched["LuA01M"] >= 95.0 and matched["KimSY03"] < 80.0  # measured: 97.4% and 9.3%
    assert "val: 0 pairs tokenized, 1 skipped (alignment below threshold: 1)" in printed
    tokens = Vocab(load_tokenizer(meta / "tokenizer.json")).tokens
    auto, aligned = ([int(t) for t in (out / f"{s}.perf").read_text().split()] for s in ("train", "test"))
    assert (out / "train.score").read_text() == (out / "test.score").read_text()
    auto_notes, aligned_notes = _performance_notes(auto, tokens), _performance_notes(aligned, tokens)
    agree = sum((Counter(auto_notes) & Counter(aligned_notes)).values()) / max(len(auto_notes), len(aligned_notes))
    assert agree >= 0.95  # measured: 1.0 (459 of 459 notes; the token sequences are identical)

    cached = sorted((meta / "cache").glob("*.alignment.tsv"))
    assert len(cached) == 2
    stamps = [p.stat().st_mtime_ns for p in cached]
    for token_cache in (meta / "cache").glob("*.json"):  # e.g. after a tokenizer change: tokens are redone ...
        token_cache.unlink()
    assert imf(argv) == 0
    assert [p.stat().st_mtime_ns for p in cached] == stamps  # ... but not the alignments
    assert capsys.readouterr().out.count("aligned with parangonar") == 2


def test_a_refusal_kept_beside_parangonars_is_said_once():
    from instruct_museformer.data.corpus import _keep_reason
    from instruct_museformer.tokens.errors import TokenizationError

    refused = TokenizationError("bar mismatch", "p.mid: 12 bars annotated, 14 in the score")
    again = TokenizationError("alignment below threshold", f"{refused}; the alignment skips 3 bars")
    kept = _keep_reason(refused, again)
    assert kept.reason == "bar mismatch"
    assert str(kept) == f"{refused}; parangonar: the alignment skips 3 bars"
    other = TokenizationError("no alignment", "parangonar failed")
    assert str(_keep_reason(refused, other)) == f"{refused}; parangonar: parangonar failed"
    assert _keep_reason(None, other) is other


def test_an_archive_is_unpacked_once_whatever_its_path_or_mtime(tmp_path: Path, capsys):
    """A shared archive mounted anew gets a new mtime; keyed by content, it keeps its unpacked folder (and so
    the paths the token and alignment caches name)."""
    import tarfile

    from instruct_museformer.data.corpus import unpack_archive

    (tmp_path / "nasap").mkdir()
    (tmp_path / "nasap" / "piece.txt").write_text("notes")
    archive = tmp_path / "corpus.tar.xz"
    with tarfile.open(archive, "w:xz") as tar:
        tar.add(tmp_path / "nasap", arcname="nasap")
    cache = tmp_path / "cache"
    first = unpack_archive(archive, cache)
    assert (first / "piece.txt").read_text() == "notes"
    assert capsys.readouterr().err.count("unpacking") == 1
    os.utime(archive, (1_000_000_000, 1_000_000_000))
    moved = tmp_path / "elsewhere" / "corpus.tar.xz"
    moved.parent.mkdir()
    shutil.copy(archive, moved)
    assert unpack_archive(archive, cache) == unpack_archive(moved, cache) == first
    assert "unpacking" not in capsys.readouterr().err

"""Bad inputs raise TokenizationError / UserError naming the file, never a raw traceback."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from instruct_museformer.errors import UserError
from instruct_museformer.tokens.errors import TokenizationError
from instruct_museformer.tokens.pair import tokenize_pair
from instruct_museformer.tokens.score import tokenize_score

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
BACH = FIXTURES / "nasap" / "Bach" / "Prelude" / "bwv_854"
BEETHOVEN = FIXTURES / "nasap" / "Beethoven" / "Piano_Sonatas" / "21-2"

EMPTY_MUSICXML = """<?xml version="1.0" encoding="UTF-8"?>
<score-partwise version="3.1">
  <part-list><score-part id="P1"><part-name>Piano</part-name></score-part></part-list>
  <part id="P1">
    <measure number="1">
      <attributes><divisions>1</divisions><time><beats>4</beats><beat-type>4</beat-type></time></attributes>
    </measure>
  </part>
</score-partwise>
"""

NO_MEASURES_MUSICXML = """<?xml version="1.0" encoding="UTF-8"?>
<score-partwise version="3.1">
  <part-list><score-part id="P1"><part-name>Piano</part-name></score-part></part-list>
  <part id="P1"></part>
</score-partwise>
"""


def _pair(tokenizer, score=None, performance=None, **kw):
    kw.setdefault("alignment", BEETHOVEN / "KimSY03_note_alignments" / "note_alignment.tsv")
    return tokenize_pair(score or BEETHOVEN / "xml_score.musicxml", performance or BEETHOVEN / "KimSY03.mid",
                         tokenizer, **kw)


def _expect(reason: str, name: str, call):
    with pytest.raises(TokenizationError) as info:
        call()
    assert info.value.reason == reason
    assert name in str(info.value)
    assert isinstance(info.value, UserError)


def test_truncated_midi(tokenizer, tmp_path):
    bad = tmp_path / "truncated.mid"
    bad.write_bytes((BEETHOVEN / "KimSY03.mid").read_bytes()[:300])
    _expect("parse error", "truncated.mid", lambda: _pair(tokenizer, performance=bad))


def test_text_file_named_mid(tokenizer, tmp_path):
    bad = tmp_path / "notes.mid"
    bad.write_text("this is not a MIDI file\n")
    _expect("parse error", "notes.mid", lambda: _pair(tokenizer, performance=bad))
    with pytest.raises(UserError, match="notes.mid"):
        tokenize_score(bad, tokenizer)


def test_missing_files(tokenizer, tmp_path):
    _expect("missing file", "absent.mid", lambda: _pair(tokenizer, performance=tmp_path / "absent.mid"))
    _expect("missing file", "absent.musicxml", lambda: _pair(tokenizer, score=tmp_path / "absent.musicxml"))
    _expect("missing file", "absent.tsv", lambda: _pair(tokenizer, alignment=tmp_path / "absent.tsv"))


@pytest.mark.parametrize("content, name", [(EMPTY_MUSICXML, "empty.musicxml"), ("", "zero.musicxml"),
                                           (NO_MEASURES_MUSICXML, "nomeasure.musicxml"),
                                           ("<not xml", "broken.musicxml")])
def test_unusable_musicxml(tokenizer, tmp_path, content, name):
    bad = tmp_path / name
    bad.write_text(content)
    with pytest.raises(UserError, match=name):
        tokenize_score(bad, tokenizer)
    _expect("parse error", name, lambda: _pair(tokenizer, score=bad))


def test_unsupported_score_format(tokenizer, tmp_path):
    bad = tmp_path / "score.pdf"
    bad.write_bytes(b"%PDF-1.4")
    with pytest.raises(UserError, match="score.pdf: unsupported score format"):
        tokenize_score(bad, tokenizer)


def test_unmatched_bars(tokenizer, tmp_path):
    lines = (BEETHOVEN / "KimSY03_annotations.txt").read_text().splitlines()
    short = tmp_path / "KimSY03_annotations.txt"
    short.write_text("\n".join(lines[:-12]) + "\n")  # drops the last two bars' beats
    _expect("bar mismatch", "KimSY03_annotations.txt",
            lambda: _pair(tokenizer, alignment=None, annotations=short))


def test_unmatched_score_annotations(tokenizer, tmp_path):
    lines = (BEETHOVEN / "midi_score_annotations.txt").read_text().splitlines()
    short = tmp_path / "midi_score_annotations.txt"
    short.write_text("\n".join(lines[:-3]) + "\n")
    _expect("bar mismatch", "KimSY03_annotations.txt",
            lambda: _pair(tokenizer, score=BEETHOVEN / "midi_score.mid", alignment=None,
                          annotations=BEETHOVEN / "KimSY03_annotations.txt", score_annotations=short))


def test_no_alignment(tokenizer, tmp_path):
    _expect("no alignment", "KimSY03.mid", lambda: _pair(tokenizer, alignment=None))
    foreign = tmp_path / "note_alignment.tsv"
    shutil.copy(BACH / "LuA01M_note_alignments" / "note_alignment.tsv", foreign)
    text = foreign.read_text().replace("\tn", "\tx")  # no xml id matches any more
    lines = text.splitlines()
    foreign.write_text("\n".join([lines[0]] + [("zz" + ln) for ln in lines[1:]]) + "\n")
    _expect("no alignment", "note_alignment.tsv", lambda: _pair(tokenizer, alignment=foreign))


def test_alignment_with_wrong_columns(tokenizer, tmp_path):
    bad = tmp_path / "note_alignment.tsv"
    bad.write_text("a\tb\n1\t2\n")
    _expect("parse error", "note_alignment.tsv", lambda: _pair(tokenizer, alignment=bad))


def test_corrupt_annotations_are_refused(tokenizer, tmp_path):
    """A run of beats 4 ms apart (an (n)ASAP defect) would put later bars out of place: refused."""
    lines = (BEETHOVEN / "KimSY03_annotations.txt").read_text().splitlines()
    start = float(lines[10].split("\t")[0])
    corrupt = []
    for k, line in enumerate(lines):
        fields = line.split("\t")
        if 10 <= k < 40:
            fields[0] = fields[1] = f"{start + 0.004 * (k - 10):.6f}"
        corrupt.append("\t".join(fields))
    path = tmp_path / "KimSY03_annotations.txt"
    path.write_text("\n".join(corrupt) + "\n")
    _expect("bar mismatch", "KimSY03_annotations.txt", lambda: _pair(tokenizer, alignment=None, annotations=path))

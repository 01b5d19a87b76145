"""``imf roundtrip`` for one pair and for a small corpus described by a metadata CSV."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from instruct_museformer.cli import main as imf

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
NASAP = FIXTURES / "nasap"
BEETHOVEN = NASAP / "Beethoven" / "Piano_Sonatas" / "21-2"


def test_one_pair(capsys, tmp_path):
    out = tmp_path / "figures.json"
    code = imf(["roundtrip", "--score", str(BEETHOVEN / "xml_score.musicxml"),
                "--performance", str(BEETHOVEN / "Sekino05.mid"),
                "--alignment", str(BEETHOVEN / "Sekino05_note_alignments" / "note_alignment.tsv"),
                "--json", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "onset (aligned notes): median" in text and "pedal changes" in text and "28 bars" in text
    payload = json.loads(out.read_text())
    assert payload["summary"]["ok"] == 1
    assert payload["pairs"][0]["onset_aligned"]["median_ms"] <= 10.0


def test_corpus(capsys, tmp_path):
    metadata = tmp_path / "metadata.csv"
    rows = []
    for perf in ("KimSY03", "YOO05M"):
        folder = "Beethoven/Piano_Sonatas/21-2"
        rows.append({"folder": folder, "xml_score": f"{folder}/xml_score.musicxml",
                     "midi_performance": f"{folder}/{perf}.mid",
                     "performance_annotations": f"{folder}/{perf}_annotations.txt",
                     "midi_score": f"{folder}/midi_score.mid",
                     "midi_score_annotations": f"{folder}/midi_score_annotations.txt",
                     "note_alignments": "wrong/path.tsv",
                     "note_alignments_fixed": f"{folder}/{perf}_note_alignments/note_alignment.tsv"})
    rows.append({**rows[0], "midi_performance": "Beethoven/Piano_Sonatas/21-2/absent.mid"})
    with open(metadata, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "corpus.json"
    code = imf(["roundtrip", "--corpus", "nasap", "--root", str(NASAP), "--metadata", str(metadata),
                "--json", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "pairs: 3, tokenized: 2" in text and "missing file" in text
    summary = json.loads(out.read_text())["summary"]
    assert summary["pairs_within_onset_targets"] == 1.0
    assert imf(["roundtrip", "--corpus", "nasap", "--root", str(NASAP), "--metadata", str(metadata),
                "--source", "annotations", "--limit", "1"]) == 0
    assert "pairs: 1, tokenized: 1" in capsys.readouterr().out
    assert imf(["roundtrip", "--corpus", "nasap", "--root", str(NASAP), "--metadata", str(metadata),
                "--source", "annotations-midi", "--limit", "1"]) == 0
    assert "pairs: 1, tokenized: 1" in capsys.readouterr().out


def test_user_errors_are_one_line(capsys, tmp_path):
    assert imf(["roundtrip", "--corpus", "nasap"]) == 2
    assert "needs --root" in capsys.readouterr().err
    assert imf(["roundtrip", "--corpus", "nasap", "--root", str(tmp_path)]) == 2
    assert "metadata.csv: metadata CSV not found" in capsys.readouterr().err
    bad = tmp_path / "bad.mid"
    bad.write_text("hello")
    assert imf(["roundtrip", "--score", str(BEETHOVEN / "xml_score.musicxml"), "--performance", str(bad),
                "--annotations", str(BEETHOVEN / "KimSY03_annotations.txt")]) == 2
    err = capsys.readouterr().err
    assert "bad.mid: not a MIDI file" in err and "Traceback" not in err
    assert imf(["roundtrip", "--score", str(BEETHOVEN / "xml_score.musicxml"),
                "--performance", str(BEETHOVEN / "KimSY03.mid")]) == 2

from pathlib import Path

import pytest

from instruct_museformer.errors import UserError
from instruct_museformer.evaluate.sources import manifest_jobs, rendering_name

BACH = Path(__file__).resolve().parents[1] / "fixtures" / "nasap" / "Bach" / "Prelude" / "bwv_854"


def test_rendering_naming_convention():
    assert rendering_name("Bach/Prelude/bwv_854") == "Bach__Prelude__bwv_854"
    assert rendering_name("/Chopin/Ballades/1/") == "Chopin__Ballades__1"


def test_manifest_humans_and_alignments(tmp_path):
    tsv = BACH / "LuA01M_note_alignments" / "note_alignment.tsv"
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "score,rendering,humans,human_alignments,name\n"
        f"{BACH / 'xml_score.musicxml'},r.mid,,{tsv},bach\n"  # alignment alone: MIDI by (n)ASAP naming
        f"{BACH / 'xml_score.musicxml'},,{BACH / 'Ozaki01M.mid'};{tmp_path / 'x.mid'},,\n"
    )
    first, second = manifest_jobs(manifest)
    assert first.name == "bach" and first.rendering == tmp_path / "r.mid"  # relative to the manifest
    assert first.humans[0].midi == BACH / "LuA01M.mid" and first.humans[0].alignment == tsv
    assert second.rendering is None and second.name.endswith("bwv_854")
    # the (n)ASAP alignment beside a MIDI is found; a MIDI without one will be aligned with parangonar
    assert second.humans[0].alignment == BACH / "Ozaki01M_note_alignments" / "note_alignment.tsv"
    assert second.humans[1].alignment is None


def test_manifest_mistakes_name_the_file(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"score,humans,human_alignments\n{BACH / 'xml_score.musicxml'},a.mid;b.mid,a.tsv\n")
    with pytest.raises(UserError, match="m.csv:2: 2 humans but 1 human_alignments"):
        manifest_jobs(manifest)
    manifest.write_text("score,comment\nscore.musicxml,hello\n")
    with pytest.raises(UserError, match="needs a 'rendering', 'humans' or 'human_alignments' column"):
        manifest_jobs(manifest)

"""Score loading in every supported format and the deadpan score tokens."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from instruct_museformer.tokens import specials
from instruct_museformer.tokens.score import load_score, tokenize_score

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
BEETHOVEN = FIXTURES / "nasap" / "Beethoven" / "Piano_Sonatas" / "21-2"
MOZART_XML = FIXTURES / "partitura_mozart_k265_var1" / "tests" / "data" / "musicxml" / "mozart_k265_var1.musicxml"

CONTAINER = """<?xml version="1.0" encoding="UTF-8"?>
<container><rootfiles><rootfile full-path="score.musicxml"/></rootfiles></container>
"""


def test_mei_and_mxl_give_the_same_ids(tokenizer, tmp_path):
    import partitura as pt

    from instruct_museformer.tokens.tokenizer import build_tokenizer

    reference = tokenize_score(MOZART_XML, tokenizer)
    mei = tmp_path / "mozart.mei"
    pt.save_mei(pt.load_score(str(MOZART_XML)), str(mei))
    # partitura's MEI writer drops slurs: the notes (the vocabulary without markings) are the same
    notes_only = build_tokenizer(score_markings=False)
    assert tokenize_score(mei, notes_only) == tokenize_score(MOZART_XML, notes_only)
    mxl = tmp_path / "mozart.mxl"
    with zipfile.ZipFile(mxl, "w") as archive:
        archive.writestr("META-INF/container.xml", CONTAINER)
        archive.writestr("score.musicxml", MOZART_XML.read_text(encoding="utf-8"))
    assert tokenize_score(mxl, tokenizer) == reference


def test_unfolded_ids_and_dynamics(tokenizer):
    data = load_score(BEETHOVEN / "xml_score.musicxml")
    assert all(i.endswith("-1") for i in data.ids)  # ids of the maximal unfolding
    assert len(data.measures) == 28
    assert len(np.unique(data.velocity)) > 1  # pp / p / sf markings are used
    assert data.tempo_qpm == 20.0  # the score's own marking (quarter = 20)
    ids = tokenize_score(BEETHOVEN / "xml_score.musicxml", tokenizer)
    velocities = {tokenizer[i] for i in ids if tokenizer[i].startswith("Velocity_")}
    assert len(velocities) > 1


def test_midi_score_measures_follow_time_signatures(tokenizer):
    data = load_score(BEETHOVEN / "midi_score.mid")
    assert data.measures[0].start == 0.0 and (data.measures[0].numerator, data.measures[0].denominator) == (6, 8)
    with_annotations = load_score(BEETHOVEN / "midi_score.mid", BEETHOVEN / "midi_score_annotations.txt")
    assert len(with_annotations.measures) == 28
    ids = tokenize_score(BEETHOVEN / "midi_score.mid", tokenizer)
    assert ids[-1] == specials.BAR


PICKUP_KERN = "**kern\n*clefG2\n*M3/4\n4c\n=1\n4d\n4e\n4f\n=2\n2.g\n==\n*-\n"


def test_kern_with_anacrusis(tokenizer, tmp_path):
    """The pickup note sits on beat 3 of a full first bar; the closing Bar token ends every bar."""
    path = tmp_path / "pickup.krn"
    path.write_text(PICKUP_KERN)
    names = [tokenizer[i] for i in tokenize_score(path, tokenizer)]
    tempo = names[2]
    assert tempo.startswith("Tempo_") and abs(float(tempo.split("_")[1]) / 100.0 - 1) < 0.02  # default 100 bpm
    assert names == [
        "TimeSig_3/4", "Position_0", tempo, "Position_96", "Pitch_60", "Velocity_71", "Duration_1.0.16",
        "Bar_None",
        "TimeSig_3/4", "Position_0", "Pitch_62", "Velocity_71", "Duration_1.0.16", "Position_48", "Pitch_64",
        "Velocity_71", "Duration_1.0.16", "Position_96", "Pitch_65", "Velocity_71", "Duration_1.0.16", "Bar_None",
        "TimeSig_3/4", "Position_0", "Pitch_67", "Velocity_71", "Duration_3.0.8", "Bar_None",
    ]

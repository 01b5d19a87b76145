"""Synthetic pieces for the tokenizer tests: bar k of the score holds four quarter notes of one pitch (60,
62, 64, ...), so the pitches of a performance bar say which score bar it plays. Note ids are partitura's for
this MusicXML (``p0n{j}``, the j-th written note), suffixed with their pass as (n)ASAP's alignments are.
"""

from __future__ import annotations

from pathlib import Path

from instruct_museformer.tokens import specials
from instruct_museformer.tokens.tokenizer import Vocab

STEPS = "CDEFGAB"
SECONDS_PER_QUARTER = 0.5


def musicxml(bars: int, repeat: tuple[int, int] | None = None) -> str:
    """``bars`` bars of 4/4 (bar k: four quarters of the k-th white key from middle C); ``repeat`` = (first,
    last) bar between repeat signs."""
    measures = []
    for k in range(1, bars + 1):
        parts = [f'<measure number="{k}">']
        if k == 1:
            parts.append("<attributes><divisions>1</divisions><time><beats>4</beats><beat-type>4</beat-type></time>"
                         "</attributes>")
        if repeat and k == repeat[0]:
            parts.append('<barline location="left"><bar-style>heavy-light</bar-style>'
                         '<repeat direction="forward"/></barline>')
        pitch = f"<pitch><step>{STEPS[(k - 1) % 7]}</step><octave>{4 + (k - 1) // 7}</octave></pitch>"
        parts += [f"<note>{pitch}<duration>1</duration><type>quarter</type></note>"] * 4
        if repeat and k == repeat[1]:
            parts.append('<barline location="right"><bar-style>light-heavy</bar-style>'
                         '<repeat direction="backward"/></barline>')
        measures.append("".join(parts) + "</measure>")
    return ('<?xml version="1.0" encoding="UTF-8"?><score-partwise version="3.1"><part-list><score-part id="P1">'
            '<part-name>Piano</part-name></score-part></part-list><part id="P1">' + "".join(measures)
            + "</part></score-partwise>")


def pitch_of(bar: int) -> int:
    return 12 * ((bar - 1) // 7) + 60 + [0, 2, 4, 5, 7, 9, 11][(bar - 1) % 7]


def piece(tmp_path: Path, bars: int, played: list[int], aligned: list[bool] | None = None,
           repeat: tuple[int, int] | None = None) -> dict[str, Path]:
    """Score, performance playing the score bars ``played`` in that order (one quarter every 0.5 s), its
    beat annotations (a downbeat per played bar) and a note alignment of the played notes (bars whose
    ``aligned`` flag is False are left unaligned, as insertions)."""
    from symusic import Note, Score, Track

    aligned = aligned or [True] * len(played)
    score = tmp_path / "score.musicxml"
    score.write_text(musicxml(bars, repeat))
    midi, track = Score(480), Track(program=0)
    rows, labels, passes = ["xml_id\tmidi_id\ttrack\tchannel\tpitch\tonset"], [], {}
    for n, (bar, keep) in enumerate(zip(played, aligned, strict=True)):
        passes[bar] = passes.get(bar, 0) + 1
        for beat in range(4):
            index, start = 4 * n + beat, (4 * n + beat) * SECONDS_PER_QUARTER
            track.notes.append(Note(index * 480, 400, pitch_of(bar), 64))
            labels.append(f"{start:.3f}\t{start:.3f}\t{'db' if beat == 0 else 'b'}")
            xml_id = f"p0n{4 * (bar - 1) + beat}-{passes[bar]}" if keep else "insertion"
            rows.append(f"{xml_id}\tn{index}\t0\t0\t{pitch_of(bar)}\t{start:.3f}")
    midi.tracks.append(track)  # 120 bpm, the default: 480 ticks = 0.5 s
    performance = tmp_path / "performance.mid"
    midi.dump_midi(str(performance))
    annotations = tmp_path / "annotations.txt"
    annotations.write_text("\n".join(labels) + "\n")
    alignment = tmp_path / "note_alignment.tsv"
    alignment.write_text("\n".join(rows) + "\n")
    return {"score": score, "performance": performance, "annotations": annotations, "alignment": alignment}


def bar_pitches(ids: list[int], tokenizer) -> list[set[int]]:
    """The pitches of each bar of a token sequence."""
    tokens = Vocab(tokenizer).tokens
    bars: list[set[int]] = [set()]
    for t in ids:
        if t == specials.BAR:
            bars.append(set())
        elif tokens[t].startswith("Pitch_"):
            bars[-1].add(int(tokens[t].split("_")[1]))
    return bars[:-1]

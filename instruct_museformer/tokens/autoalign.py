"""Note alignment of a score/performance pair that comes without one, by parangonar.

A researcher's own pairs often have no note alignment, match file or beat annotations. Such a pair is
aligned with parangonar's DualDTWNoteMatcher -- the matcher ``imf evaluate`` aligns renderings with
(:func:`match_notes` is that one piece of code) -- against the unfolded score, and the result is written
as an (n)ASAP ``note_alignment.tsv`` so that tokenization reads it like any other alignment and a re-run
reads it back instead of aligning again. The share of score notes matched says how far to trust it: a
pair below :data:`MIN_MATCHED` is not tokenized (a wrong alignment would pair bar k with another bar).
"""

from __future__ import annotations

import csv
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..files import write_text_atomic
from .errors import TokenizationError

MIN_MATCHED = 0.8  # share of score notes parangonar must match; (n)ASAP fixture pairs reach 0.97-1.0
TSV_COLUMNS = ("xml_id", "midi_id", "track", "channel", "pitch", "onset")


@dataclass(frozen=True)
class AutoAlignment:
    """An alignment file written by :func:`align_pair` and how much of the score it matched."""

    path: Path
    score_notes: int
    matched: int

    @property
    def fraction(self) -> float:
        return self.matched / self.score_notes if self.score_notes else 0.0


def match_notes(score_notes: np.ndarray, performance_notes: np.ndarray) -> list[dict]:
    """parangonar's DualDTWNoteMatcher on partitura note arrays; ids as strings. Exceptions propagate."""
    import parangonar

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        alignment = parangonar.DualDTWNoteMatcher()(score_notes, performance_notes)
    return [
        {key: (str(value) if key in ("score_id", "performance_id") else value) for key, value in a.items()}
        for a in alignment
    ]


def _note_arrays(score: Path, performance: Path) -> tuple[np.ndarray, np.ndarray]:
    """The unfolded score's notes (the id space of (n)ASAP alignments) and the performance's notes."""
    import partitura as pt

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            parts = pt.load_score(str(score)).parts
            part = pt.score.unfold_part_maximal(pt.score.merge_parts(parts))
            score_notes = part.note_array(include_grace_notes=True)
        except Exception as error:
            raise TokenizationError("parse error", f"{score}: cannot read the score ({error})") from None
        try:
            performance_notes = pt.load_performance_midi(str(performance)).note_array()
        except Exception as error:
            raise TokenizationError("parse error", f"{performance}: cannot read the MIDI ({error})") from None
    if not len(score_notes) or not len(performance_notes):
        raise TokenizationError("parse error", f"{performance}: no notes to align (score or performance is empty)")
    return score_notes, performance_notes


def _tsv(alignment: list[dict], performance_notes: np.ndarray) -> str:
    onset = {str(i): float(t) for i, t in zip(performance_notes["id"], performance_notes["onset_sec"], strict=True)}
    pitch = {str(i): int(p) for i, p in zip(performance_notes["id"], performance_notes["pitch"], strict=True)}
    out = io.StringIO()
    writer = csv.writer(out, delimiter="\t", lineterminator="\n")
    writer.writerow(TSV_COLUMNS)
    for entry in alignment:
        label, sid, pid = entry.get("label"), entry.get("score_id"), entry.get("performance_id")
        if label == "match":
            writer.writerow([sid, pid, 0, 0, pitch[pid], f"{onset[pid]:.6f}"])
        elif label == "deletion":
            writer.writerow([sid, "deletion", "", "", "", ""])
        elif label == "insertion":
            writer.writerow(["insertion", pid, 0, 0, pitch[pid], f"{onset[pid]:.6f}"])
    return out.getvalue()


def read_auto_alignment(path: Path) -> AutoAlignment:
    """Counts of a written alignment: score notes are its match and deletion rows."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    matched = sum(1 for r in rows if r["xml_id"] != "insertion" and r["midi_id"] != "deletion")
    deleted = sum(1 for r in rows if r["midi_id"] == "deletion")
    return AutoAlignment(path, matched + deleted, matched)


def align_pair(score: Path, performance: Path, out: Path) -> AutoAlignment:
    """Align ``performance`` to ``score`` into ``out`` (a note_alignment.tsv); read back if it exists."""
    if out.is_file():
        return read_auto_alignment(out)
    score_notes, performance_notes = _note_arrays(Path(score), Path(performance))
    try:
        alignment = match_notes(score_notes, performance_notes)
    except Exception as error:
        raise TokenizationError("no alignment", f"{performance}: parangonar could not align it to {score} "
                                f"({type(error).__name__}: {error})") from None
    write_text_atomic(out, _tsv(alignment, performance_notes))
    return read_auto_alignment(out)

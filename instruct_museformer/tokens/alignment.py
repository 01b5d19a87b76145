"""Score <-> performance time anchors from the three alignment sources the issue names.

Every source is reduced to the same thing: pairs (score time in quarters of the unfolded score,
performance time in seconds). The performance tempo map is fitted through these anchors
(:mod:`.performance`), so the sources differ only in how dense and how reliable the anchors are:

- (n)ASAP ``note_alignment.tsv``: one anchor per aligned note (grace notes excluded; their notated
  onset is not where they are played);
- match files (partitura ``load_match``): the same, through the match's note ids;
- ASAP beat annotations: one anchor per annotated beat; downbeats ``db`` are matched to the score's
  measures in order (the score's own annotations, when given for a MIDI score, are matched beat by beat).
"""

from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path

import numpy as np

from .errors import TokenizationError
from .grid import Measure
from .score import ScoreData, _check_file, midi_seconds_to_quarters, read_beat_annotations, read_midi


def _lookup(ids: dict[str, float], note_id: str) -> float | None:
    if note_id in ids:
        return ids[note_id]
    return ids.get(f"{note_id}-1")  # a non-unfolded id against the unfolded score (first pass)


def anchors_from_note_alignment(path: Path, score: ScoreData) -> tuple[np.ndarray, np.ndarray]:
    """(score quarters, performance seconds) of the notes matched in a (n)ASAP note_alignment.tsv."""
    path = Path(path)
    _check_file(path)
    onsets = {k: v for k, v in score.id_to_onset().items()}
    graces = {i for i, g in zip(score.ids, score.is_grace, strict=True) if g}
    qs, ts = [], []
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle, delimiter="\t")
            if reader.fieldnames is None or not {"xml_id", "midi_id", "onset"} <= set(reader.fieldnames):
                raise TokenizationError("parse error", f"{path}: not a note_alignment.tsv (needs xml_id, "
                                                       "midi_id, onset columns)")
            for row in reader:
                xml_id, midi_id = row["xml_id"], row["midi_id"]
                if xml_id in ("insertion", "") or midi_id in ("deletion", "") or xml_id in graces:
                    continue
                q = _lookup(onsets, xml_id)
                if q is None:
                    continue
                onset = float(row["onset"])
                if math.isfinite(onset):
                    qs.append(q)
                    ts.append(onset)
    except TokenizationError:
        raise
    except (OSError, UnicodeDecodeError, ValueError, csv.Error) as error:
        raise TokenizationError("parse error", f"{path}: cannot read note alignment ({error})") from None
    return _checked(path, qs, ts)


def anchors_from_match(path: Path, score: ScoreData) -> tuple[np.ndarray, np.ndarray]:
    """(score quarters, performance seconds) of the matched notes of a match file."""
    import partitura as pt

    path = Path(path)
    _check_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = pt.load_match(str(path))
    except Exception as error:  # partitura raises many types on malformed files
        raise TokenizationError("parse error", f"{path}: cannot read match file ({type(error).__name__}: "
                                               f"{error})") from None
    performance, alignment = loaded[0], loaded[1]
    parts = getattr(performance, "performedparts", [performance])
    perf_onsets: dict[str, float] = {}
    for part in parts:
        notes = part.note_array()
        perf_onsets.update({str(i): float(t) for i, t in zip(notes["id"], notes["onset_sec"], strict=True)})
    onsets = score.id_to_onset()
    graces = {i for i, g in zip(score.ids, score.is_grace, strict=True) if g}
    qs, ts = [], []
    for pair in alignment:
        if pair.get("label") != "match":
            continue
        score_id, perf_id = str(pair.get("score_id")), str(pair.get("performance_id"))
        q = _lookup(onsets, score_id)
        if q is None or perf_id not in perf_onsets or score_id in graces or f"{score_id}-1" in graces:
            continue
        qs.append(q)
        ts.append(perf_onsets[perf_id])
    return _checked(path, qs, ts)


def anchors_from_annotations(
    path: Path, score: ScoreData, score_annotations: Path | None = None, score_midi: Path | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(score quarters, performance seconds) of annotated beats.

    With the score's own annotations (a MIDI score and its ``midi_score_annotations.txt``) beats are
    paired one to one. Otherwise each performance downbeat group (``db`` and the beats after it) is
    spread evenly over the matching score measure; beats before the first downbeat end the first measure.
    """
    path = Path(path)
    beats = read_beat_annotations(path)
    if score_annotations is not None and score_midi is not None:
        score_beats = read_beat_annotations(Path(score_annotations))
        if len(score_beats) != len(beats):
            raise TokenizationError(
                "bar mismatch",
                f"{path}: {len(beats)} annotated beats, but {score_annotations} has {len(score_beats)}",
            )
        seconds, quarters = midi_seconds_to_quarters(read_midi(Path(score_midi), "quarter"))
        qs = np.interp([b[0] for b in score_beats], seconds, quarters)
        return _checked(path, list(qs), [b[0] for b in beats])
    groups: list[list[float]] = [[]]
    for time, label in beats:
        if label.startswith("db"):
            groups.append([])
        groups[-1].append(time)
    pickup, groups = groups[0], groups[1:]
    measures = _annotation_bars(score.measures)
    qs, ts = [], []
    if pickup and measures:
        # Beats before the first annotated downbeat end the first measure (an anacrusis, or a first
        # bar whose downbeat is silent); they are spaced like the beats of the next annotated bar.
        first = measures.pop(0)
        if groups and measures:
            step = (measures[0].end - measures[0].start) / len(groups[0])
        else:
            step = (first.end - first.start) / len(pickup)
        qs += [first.end - (len(pickup) - k) * step for k in range(len(pickup))]
        ts += pickup
    # Annotations end with the last sounding downbeat: trailing measures without onsets are not counted.
    sounding = list(measures)
    while len(sounding) > len(groups) and sounding and sounding[-1].start > float(score.onset.max()) + 1e-6:
        sounding.pop()
    matched = _match_bar_count(sounding, len(groups), allow_pickup=not pickup)
    if matched is None:
        raise TokenizationError(
            "bar mismatch",
            f"{path}: {len(groups)} annotated bars (downbeats), but {score.path} has {len(measures)} "
            "measures after unfolding",
        )
    for group, measure in zip(groups, matched, strict=True):
        step = (measure.end - measure.start) / len(group)
        qs += [measure.start + k * step for k in range(len(group))]
        ts += group
    return _checked(path, qs, ts)


def _is_short(measure: Measure) -> bool:
    return measure.end - measure.start < 4.0 * measure.numerator / measure.denominator - 1e-6


def _annotation_bars(measures: list[Measure]) -> list[Measure]:
    """Measures as ASAP annotates bars: a bar split in two by a repeat sign counts once."""
    out: list[Measure] = []
    i = 0
    while i < len(measures):
        m = measures[i]
        if 0 < i and i + 1 < len(measures) and _is_short(m):
            nxt = measures[i + 1]
            if abs((m.end - m.start) + (nxt.end - nxt.start) - 4.0 * m.numerator / m.denominator) < 1e-6:
                out.append(Measure(m.start, nxt.end, m.numerator, m.denominator))
                i += 2
                continue
        out.append(m)
        i += 1
    return out


def _match_bar_count(measures: list[Measure], count: int, allow_pickup: bool) -> list[Measure] | None:
    """The measures that carry annotated downbeats: an unannotated pickup or short last bar is left out."""
    variants = [measures]
    if measures and _is_short(measures[-1]):
        variants.append(measures[:-1])
    if allow_pickup and measures and _is_short(measures[0]):
        variants += [v[1:] for v in list(variants)]
    for variant in variants:
        if len(variant) == count:
            return variant
    return None


def _checked(path: Path, qs: list[float], ts: list[float]) -> tuple[np.ndarray, np.ndarray]:
    if len(qs) < 2:
        raise TokenizationError("no alignment", f"{path}: fewer than two usable alignment anchors")
    return np.asarray(qs, dtype=np.float64), np.asarray(ts, dtype=np.float64)

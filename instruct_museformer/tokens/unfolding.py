"""Which unfolding of the score a note alignment refers to.

Tokenization unfolds a score maximally (every repeat taken, repeats taken again after a da capo), the
unfolding the note ids of (n)ASAP's robust alignments refer to (``n6-1``, ``n6-2``: pass 1 and 2 of note
``n6``). A pianist who plays a da capo without its repeats, or skips a repeat, plays another path
through the score, and (n)ASAP aligns such a performance against that path (Beethoven op. 22/iii:
132 bars played of the 164 of the maximal unfolding). Tokenized against the maximal unfolding, the
bars never played would be paired with a few milliseconds of the performance.

The path played is the one whose note ids are the alignment's score ids: each path is scored by the
Jaccard index of the two id sets, computed from partitura's segments without building a part per
path (a Schubert impromptu has 2,048 paths).
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from pathlib import Path
from typing import Any

from .errors import TokenizationError

FITS = 0.95  # Jaccard of the maximal unfolding with the alignment above which it is kept (robust: >= 0.96)
MIN_GAIN = 0.05  # another path must fit this much better than the maximal unfolding to replace it
MAX_REPEAT_SIGNS = 16  # more repeat/volta signs than this: 2^k paths, too many to enumerate
_PASS = re.compile(r"^(.*)-(\d+)$")


def alignment_score_ids(path: Path) -> set[str]:
    """Score note ids of a note_alignment.tsv (its matched and deleted notes)."""
    if not Path(path).is_file():
        raise TokenizationError("missing file", f"{path}: file not found")
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            return {row["xml_id"] for row in csv.DictReader(handle, delimiter="\t")
                    if row.get("xml_id") not in (None, "", "insertion")}
    except (OSError, UnicodeDecodeError, KeyError, csv.Error) as error:
        raise TokenizationError("parse error", f"{path}: cannot read note alignment ({error})") from None


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 0.0


def _split_pass(note_id: str) -> tuple[str, int]:
    """``n6-2`` -> (``n6``, 2); an id without a pass number is pass 1."""
    match = _PASS.match(note_id)
    return (match.group(1), int(match.group(2))) if match else (note_id, 1)


def _fresh_segments(part: Any) -> dict[str, Any]:
    """partitura's repeat segments of ``part``, rebuilt: path enumeration mutates them, so a second
    ``get_paths`` on the same part (e.g. after ``unfold_part_maximal``) finds fewer paths."""
    import partitura as pt

    pt.score.add_segments(part, force_new=True)
    return pt.score.get_segments(part)


def _segment_notes(part: Any, segments: dict[str, Any]) -> dict[str, set[str]]:
    """Base note ids starting in each segment."""
    notes = [(n.start.t, str(n.id)) for n in part.notes_tied if n.id is not None]
    return {label: {i for t, i in notes if seg.start.t <= t < seg.end.t} for label, seg in segments.items()}


def _path_fit(labels: list[str], notes: dict[str, set[str]], passes: dict[int, set[str]], size: int) -> float:
    """Jaccard of the path's note ids (segment notes suffixed with the segment's pass) with the alignment's."""
    seen: Counter = Counter()
    common = total = 0
    for label in labels:
        seen[label] += 1
        common += len(notes[label] & passes.get(seen[label], set()))
        total += len(notes[label])
    return common / (size + total - common) if size + total else 0.0


def best_path(part: Any, ids: set[str]) -> tuple[str | None, float]:
    """(labels of the path whose ids fit ``ids`` best, e.g. ``A-A-B-C-A-B``; its Jaccard index), or
    (None, 0.0) for a score with too many repeat signs; ties go to the shorter path."""
    import partitura as pt

    signs = sum(1 for _ in part.iter_all(pt.score.Repeat)) + sum(1 for _ in part.iter_all(pt.score.Ending))
    if signs > MAX_REPEAT_SIGNS:
        return None, 0.0
    segments = _fresh_segments(part)
    paths = pt.score.get_paths(part, no_repeats=False, all_repeats=False, ignore_leap_info=True)
    notes = _segment_notes(part, segments)
    passes: dict[int, set[str]] = {}
    for note_id in ids:
        base, k = _split_pass(note_id)
        passes.setdefault(k, set()).add(base)
    scored = {str(p): (_path_fit(list(p.path), notes, passes, len(ids)), -len(p.path)) for p in paths}
    if not scored:
        return None, 0.0
    label = max(scored, key=scored.get)
    return label, scored[label][0]


def unfold_along(part: Any, labels: str) -> Any:
    """The part unfolded along the path ``labels`` (from :func:`best_path` on the same score), note ids
    suffixed with their pass as ``unfold_part_maximal`` does."""
    import partitura as pt

    segments = _fresh_segments(part)
    path = pt.score.Path(labels.split("-"), segments)
    return pt.score.new_part_from_path(path, part, update_ids=True)


def unfolding_for(score: Path, score_ids: list[str], alignment: Path) -> str | None:
    """The path an alignment refers to, or None when the maximal unfolding (``score_ids``) fits it."""
    from .score_reader import read_unfolded_part

    ids = alignment_score_ids(alignment)
    maximal = jaccard(ids, set(score_ids))
    if maximal >= FITS:
        return None
    try:
        merged, _ = read_unfolded_part(score)
        labels, fit = best_path(merged, ids)
    except (IndexError, KeyError, ValueError, RecursionError, AttributeError):  # partitura's path search
        return None  # the maximal unfolding stays; the alignment checks judge the pair
    return labels if labels is not None and fit >= maximal + MIN_GAIN else None

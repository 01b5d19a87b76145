"""Reading MusicXML, MEI and kern through partitura 1.9.0 into one unfolded part, robust to files from the wild.

partitura reads all three formats into the same score model, but some of its steps fail on real files
(documented with minimal files in ``docs/scores.md``); each workaround here is small and checked by a test:

- kern: the parser leaves ``KernElement`` objects (``*met(c)``, spine splits ``*^``/``*v``, section labels
  ``*>A``) on the timeline, and ``merge_parts`` / ``unfold_part_maximal`` fail on them (no ``end``). They are
  removed after loading; Humdrum expansion lists (``*>[A,A,B]``, the kern way of writing repeats) are
  played through partitura's own ``ScoreVariant`` (the machinery ``unfold_part_maximal`` uses).
- MEI: a staff whose first timed element is a breve gets a float ``ppq``, and ``merge_parts`` then fails in
  ``np.lcm``; integral float divisions are made integers before merging. The MEI reader prints repeat
  diagnostics to stdout; they are kept off ours.
- MEI: a measure ends where its own staff's content ends, and ``merge_parts`` keeps the first part's
  measures only: an empty first staff (``<staff n="1"/>``) gives a zero-length measure whose other staves'
  notes fall outside every bar. The first part's measures are lengthened to the longest part's.
- Repeats partitura cannot unfold (nested or unusual endings: ``IndexError`` / ``RecursionError`` in its
  path search), or unfolds into more than 4 times the written bars, are played as written, with a
  :class:`ScoreReadingWarning`.
- Several parts: ``merge_parts`` keeps the repeat signs of every part, so their maximal unfolding repeats
  sections again and again (or fails); only the first part's repeats and jumps are kept.
- MusicXML: ``parse_fingering`` raises on a ``<fingering>`` without a number (empty, or ``p``): such
  fingerings are dropped from a temporary copy that is read instead.
- Mensural notation (MEI ``notationtype="mensural"``) has no measures to render bar by bar: refused.
"""

from __future__ import annotations

import contextlib
import io
import re
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

from .errors import TokenizationError
from .unfolding import unfold_along

MENSURAL = re.compile(rb"""notationtype\s*=\s*["']mensural""")
MUSICXML_SUFFIXES = {".musicxml", ".xml", ".mxl"}
MAX_UNFOLD_FACTOR = 4


class ScoreReadingWarning(UserWarning):
    """A score was read with a simplification the user should know about (e.g. repeats played as written)."""


def read_unfolded_part(path: Path, unfolding: str | None = None) -> tuple[Any, Any]:
    """The score at ``path`` as one partitura Part, repeats unfolded where partitura can (else as written):
    (the merged, folded part; the unfolded part). The folded part keeps what unfolding drops (slurs).
    ``unfolding``: the path to unfold along (labels from :func:`.unfolding.best_path`) instead of the
    maximal unfolding.

    TokenizationError("parse error") for scores without parts and notations without bars (mensural MEI),
    naming the file; partitura's own errors propagate (``score.py`` turns them into one-line errors).
    """
    import partitura as pt

    _refuse_unsupported(path)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        score = _load(path)
        parts = list(score.parts)
        if not parts:
            raise TokenizationError("parse error", f"{path}: the score has no parts")
        sections = _remove_kern_elements(parts)
        _integer_divisions(parts)
        _first_part_measures_cover_all_parts(parts)
        _keep_one_copy_of_the_form(parts)
        scale = _divisions(parts[0])
        merged = pt.score.merge_parts(parts)
        scale = _divisions(merged) / scale
        if unfolding is not None:
            unfolded, problem = unfold_along(merged, unfolding), None
        elif sections is not None:
            unfolded, problem = _expand_kern_sections(merged, [(t if t < 0 else round(t * scale), label)
                                                               for t, label in sections])
        else:
            unfolded, problem = _unfold(merged)
    if problem is not None:
        warnings.warn(f"{path}: {problem}", ScoreReadingWarning, stacklevel=2)
    return merged, unfolded


def _divisions(part: Any) -> float:
    durations = getattr(part, "_quarter_durations", None) or [1]
    return float(durations[0])


def _refuse_unsupported(path: Path) -> None:
    if path.suffix.lower() != ".mei":
        return
    with open(path, "rb") as handle:
        head = handle.read(1 << 20)
    if MENSURAL.search(head):
        raise TokenizationError(
            "parse error",
            f"{path}: mensural notation (MEI notationtype=\"mensural\") has no bars to render; "
            "use a transcription into common Western notation",
        )


def _load(path: Path) -> Any:
    """partitura's ``load_score``; a MusicXML file it fails on is retried without the fingerings it cannot
    parse (empty or without a digit: ``parse_fingering`` raises IndexError / AttributeError on them)."""
    import partitura as pt

    try:
        return pt.load_score(str(path))
    except Exception:
        if path.suffix.lower() not in MUSICXML_SUFFIXES:
            raise
        cleaned = _without_unreadable_fingerings(path)
        if cleaned is None:
            raise
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / f"{path.stem}.musicxml"
        copy.write_bytes(cleaned)
        return pt.load_score(str(copy))


def _without_unreadable_fingerings(path: Path) -> bytes | None:
    """The MusicXML document (the root file of an .mxl) without ``<fingering>`` elements that hold no
    digit; None when there are none (or the file is not XML)."""
    from lxml import etree  # partitura's own XML parser (a dependency of partitura 1.9.0)

    try:
        if path.suffix.lower() == ".mxl":
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n.endswith((".xml", ".musicxml"))
                         and not n.startswith("META-INF")]
                data = archive.read(names[0])
        else:
            data = path.read_bytes()
        root = etree.fromstring(data, etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=True))
    except (OSError, IndexError, zipfile.BadZipFile, etree.XMLSyntaxError):
        return None
    unreadable = [e for e in root.iter("fingering") if not re.search(r"\d", e.text or "")]
    for element in unreadable:
        element.getparent().remove(element)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8") if unreadable else None


def _unfold(part: Any) -> tuple[Any, str | None]:
    """(unfolded part, None), or (the part as written, why) where partitura's unfolding fails or runs away
    (more than MAX_UNFOLD_FACTOR times the written bars: repeats and a da capo play a bar at most ~4 times)."""
    import partitura as pt

    try:
        unfolded = pt.score.unfold_part_maximal(part)
    except (IndexError, KeyError, ValueError, RecursionError, AttributeError) as error:
        return part, (f"repeats not unfolded, played as written (partitura cannot unfold this repeat "
                      f"structure: {type(error).__name__}: {error})")
    written = sum(1 for _ in part.iter_all(pt.score.Measure))
    bars = sum(1 for _ in unfolded.iter_all(pt.score.Measure))
    if bars > MAX_UNFOLD_FACTOR * max(written, 1):
        return part, (f"repeats not unfolded, played as written (partitura's unfolding gave {bars} bars "
                      f"from {written} written)")
    return unfolded, None


def _remove_kern_elements(parts: list[Any]) -> list[tuple[int, str]] | None:
    """Take partitura's kern-only ``KernElement`` objects off the timelines (they break merging and
    unfolding); returns the first part's section labels as (time, label) with the expansion list first
    as (-1, "[A,A,B]"), or None when the score has no expansion list (or only ``*>norep``)."""
    try:
        from partitura.io.importkern import KernElement
    except ImportError:  # a partitura without the kern parser's helper class has nothing to remove
        return None
    sections: list[tuple[int, str]] | None = None
    for k, part in enumerate(parts):
        labels = []
        for element in list(part.iter_all(KernElement)):
            text = str(getattr(element, "element", ""))
            if text.startswith(">"):
                labels.append((int(element.start.t), text[1:]))
            part.remove(element, which="start")
        if k == 0:
            sections = labels
    if not sections:
        return None
    expansions = [label for _, label in sections if label.startswith("[")]
    if not expansions:
        return None
    return [(-1, expansions[0]), *[(t, label) for t, label in sections if not label.startswith(("[", "norep"))]]


def _keep_one_copy_of_the_form(parts: list[Any]) -> None:
    """Repeat signs and jumps (segno, coda) of the first part only: ``merge_parts`` keeps every part's
    ``Repeat`` (it drops only endings, da capo and fine of the later parts), and the maximal unfolding of
    four copies of a quartet's repeats plays them over and over (Haydn op. 74/1 ii: 5,530 bars from 174)
    or fails (``IndexError``)."""
    import partitura as pt

    form = (pt.score.Repeat, pt.score.Segno, pt.score.DalSegno, pt.score.ToCoda, pt.score.Coda)
    first = {cls for cls in form if next(iter(parts[0].iter_all(cls)), None) is not None}
    for part in parts[1:]:
        for cls in first:
            for element in list(part.iter_all(cls)):
                part.remove(element)


def _first_part_measures_cover_all_parts(parts: list[Any]) -> None:
    """Lengthen each first-part measure that ends before a measure starting at the same time in another part
    ends (up to the first part's next measure): ``merge_parts`` keeps the first part's measures only, and
    partitura's MEI reader ends a measure where that staff's content ends, so an empty first staff (the last
    measure of CRIM_Mass_0030_4.mei: ``<staff n="1"/>`` over three longs) gives a zero-length measure and
    the other staves' notes in it no bar."""
    import numpy as np
    import partitura as pt

    first = [m for m in parts[0].iter_all(pt.score.Measure) if m.end is not None]
    if len(parts) < 2 or not first:
        return
    longest: dict[float, float] = {}  # measure start -> latest end among the other parts, in quarters
    for part in parts[1:]:
        measures = [m for m in part.iter_all(pt.score.Measure) if m.end is not None]
        if not measures:
            continue
        starts = part.quarter_map(np.array([m.start.t for m in measures], dtype=float))
        ends = part.quarter_map(np.array([m.end.t for m in measures], dtype=float))
        for start, end in zip(np.round(starts, 6).tolist(), ends.tolist(), strict=True):
            longest[start] = max(longest.get(start, end), end)
    quarter_map = parts[0].quarter_map
    starts = np.round(quarter_map(np.array([m.start.t for m in first], dtype=float)), 6).tolist()
    ends = quarter_map(np.array([m.end.t for m in first], dtype=float)).tolist()
    for k, measure in enumerate(first):
        end = longest.get(starts[k], ends[k])
        if k + 1 < len(first):
            end = min(end, starts[k + 1])
        if end > ends[k] + 1e-6:  # (inv_quarter_map gives NaN past the part's last time point)
            divisions = float(parts[0].quarter_duration_map(measure.start.t))
            new_end = measure.end.t + int(round((end - ends[k]) * divisions))
            parts[0].remove(measure, which="end")
            parts[0].add(measure, end=new_end)


def _integer_divisions(parts: list[Any]) -> None:
    """Integral float divisions per quarter (partitura's MEI reader makes them for breves) as ints, which
    ``merge_parts``' ``np.lcm`` needs."""
    for part in parts:
        durations = getattr(part, "_quarter_durations", None)
        if durations and all(float(d).is_integer() for d in durations):
            part._quarter_durations = [int(d) for d in durations]


def _expand_kern_sections(part: Any, sections: list[tuple[int, str]]) -> tuple[Any, str | None]:
    """Play a kern score's sections in the order of its expansion list (``*>[A,A,B]``) through partitura's
    ScoreVariant, note ids suffixed ``-<pass>`` as ``unfold_part_maximal`` does; (the score as written, why)
    when the list names a section that is not there."""
    import partitura as pt
    from partitura.utils.music import update_note_ids_after_unfolding

    order = [s.strip() for s in sections[0][1].strip("[]").split(",") if s.strip()]
    starts = {label: t for t, label in sections[1:]}
    points = sorted(set(starts.values()))
    end = part.last_point.t
    missing = [label for label in order if label not in starts]
    if missing or not points:
        return part, (f"kern expansion list [{','.join(order)}] names sections not in the score "
                      f"({', '.join(missing)}): played as written")
    variant = pt.score.ScoreVariant(part)
    for label in order:
        start = starts[label]
        k = points.index(start)
        stop = points[k + 1] if k + 1 < len(points) else end
        variant.add_segment(part.get_or_add_point(start), part.get_or_add_point(stop))
    unfolded = variant.create_variant_part()
    update_note_ids_after_unfolding(unfolded)
    return unfolded, None

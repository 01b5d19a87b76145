"""What a pianist reads beyond the notes: partitura's score model -> marking events and their token names.

A score's markings become two kinds of events, in quarters of the *unfolded* score (docs/tokens.md):

- directions at a time (dynamics, hairpins with their ends, tempo words and changes, metronome marks,
  fermatas, pedal marks, expression words), written as tokens right after the ``Position`` they fall on;
- note attributes keyed by the unfolded note id (articulations, ornaments, grace type, arpeggio, slur
  starts and ends, breath marks and caesuras) and each note's staff (hand).

Most of them survive ``unfold_part_maximal``; slurs do not, so they are read from the folded (merged)
part and carried over to every unfolded copy of their notes by id (``n6`` -> ``n6-1``, ``n6-2``).
partitura does not read ``<arpeggiate>``: it is read from the MusicXML itself, by note id.
Every marking partitura gives is counted by type (``parsed``); what became a token is counted by the
encoder (``tokenized``), so a marking that is read but not written never disappears silently.
"""

from __future__ import annotations

import bisect
import re
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .unread_markings import unread_markings

MARKINGS_VERSION = 1  # the value of the tokenizer option ``score_markings``; bump when the token list changes

DYNAMIC_LEVELS = ("pppp", "ppp", "pp", "p", "mp", "mf", "f", "ff", "fff", "ffff")
DYNAMIC_IMPULSES = ("fp", "sf", "sfz", "sffz", "fz", "rf", "rfz", "sfp")
TEMPO_WORDS = ("grave", "largo", "lento", "adagio", "larghetto", "andante", "andantino", "moderato", "allegretto",
               "allegro", "vivace", "presto", "prestissimo")
TEMPO_CHANGES = ("rit", "accel", "atempo", "tempo1", "meno", "piu", "rubato")
EXPRESSIONS = ("dolce", "espressivo", "cantabile", "legato", "leggiero", "sostenuto", "agitato", "marcato",
               "grazioso", "maestoso", "tranquillo", "scherzando", "animato", "appassionato", "energico",
               "pesante", "semplice", "con-fuoco", "con-brio", "sotto-voce", "una-corda", "tre-corde", "tenuto",
               "staccato", "calmato", "lusingando", "delicato", "misterioso", "risoluto", "giocoso", "other")
ARTICULATIONS = ("staccato", "staccatissimo", "tenuto", "accent", "strong-accent", "detached-legato", "spiccato",
                 "stress", "unstress", "soft-accent", "other")
ORNAMENTS = ("trill", "mordent", "inverted-mordent", "turn", "inverted-turn", "tremolo", "wavy-line", "other")
MAX_STAFF = 4

# Position-level tokens first (in the order they are written at a position), then per-note attributes.
DIRECTION_TOKENS: tuple[str, ...] = (
    "Cresc_End", "Dim_End", "PedalMark_End",
    *(f"TempoWord_{w}" for w in TEMPO_WORDS),
    *(f"TempoChange_{w}" for w in TEMPO_CHANGES),
    *(f"Dyn_{d}" for d in DYNAMIC_LEVELS + DYNAMIC_IMPULSES),
    "Cresc_Start", "Dim_Start",
    *(f"Expr_{w}" for w in EXPRESSIONS),
    "Fermata_Note", "Fermata_Barline", "PedalMark_Start",
)
STAFF_TOKENS: tuple[str, ...] = tuple(f"Staff_{k}" for k in range(2, MAX_STAFF + 1))
NOTE_TOKENS: tuple[str, ...] = (
    "Grace_acciaccatura", "Grace_appoggiatura",
    *(f"Artic_{a}" for a in ARTICULATIONS),
    *(f"Orn_{o}" for o in ORNAMENTS),
    "Arpeggio_None", "Slur_End", "Slur_Start", "Break_breath", "Break_caesura",
)
MARKING_TOKENS: tuple[str, ...] = DIRECTION_TOKENS + STAFF_TOKENS + NOTE_TOKENS
MARKING_KINDS = frozenset(token.partition("_")[0] for token in MARKING_TOKENS)

_ORNAMENT_NAMES = {"trill-mark": "trill", "mordent": "mordent", "inverted-mordent": "inverted-mordent",
                   "turn": "turn", "delayed-turn": "turn", "vertical-turn": "turn", "inverted-turn": "inverted-turn",
                   "delayed-inverted-turn": "inverted-turn", "inverted-vertical-turn": "inverted-turn",
                   "tremolo": "tremolo", "wavy-line": "wavy-line", "shake": "trill"}
_BREAKS = {"breath-mark": "Break_breath", "caesura": "Break_caesura"}
_LEVEL_ALIASES = {"ppppp": "pppp", "pppppp": "pppp", "fffff": "ffff", "ffffff": "ffff", "sff": "sffz", "ffp": "fp",
                  "sfpp": "sfp", "sfzp": "sfz", "pf": "fp", "piano": "p",
                  "pianissimo": "pp", "forte": "f", "fortissimo": "ff", "mezzo forte": "mf", "mezzo piano": "mp"}

# Words, matched on lower-cased text (a text may say several things: "cresc. e accel.").
_WORD_RULES: tuple[tuple[str, str, str], ...] = (
    (r"\btempo\s*(i|1|primo)\b|\bprimo tempo\b|\berstes tempo\b", "TempoChange_tempo1", "tempo change:tempo I"),
    (r"\b(a|in) tempo\b|\btempo giusto\b|\bdoppio movimento\b", "TempoChange_atempo", "tempo change:a tempo"),
    (r"\b(rit|ritar|ritard|ritardando|riten|ritenuto|ritenente|rall|rallent|rallentando|slentando|allarg|allargando)\b",
     "TempoChange_rit", "tempo change:rit"),
    (r"\b(accel|acc|acceler|accelerando|string|stringendo|stretto|incalzando|affrettando|animando)\b",
     "TempoChange_accel", "tempo change:accel"),
    (r"\bmeno\b|\bplus lent\b|\blangsamer\b", "TempoChange_meno", "tempo change:meno mosso"),
    (r"\bpi[uù] (mosso|moto|animato|vivo|presto|allegro|lento|largo)\b", "TempoChange_piu", "tempo change:più mosso"),
    (r"\brubato\b|\bad lib|\ba piacere\b|\bsenza tempo\b", "TempoChange_rubato", "tempo change:rubato"),
    (r"\b(cresc|crescendo)\b", "Cresc_Start", "crescendo (words)"),
    (r"\b(dim|dimin|diminuendo|decresc|decr|decrescendo|smorz|smorzando|calando|morendo|perdendosi|mancando)\b",
     "Dim_Start", "diminuendo (words)"),
    (r"\b(rinf|rinforz|rinforzando|rf)\b", "Dyn_rf", "dynamic:rf"),
    (r"\brfz\b", "Dyn_rfz", "dynamic:rfz"),
    (r"\b(dolce|dolcissimo|dolciss)\b", "Expr_dolce", "expression:dolce"),
    (r"\b(espressivo|espress|espr|espressione)\b", "Expr_espressivo", "expression:espressivo"),
    (r"\b(cantabile|cantando)\b", "Expr_cantabile", "expression:cantabile"),
    (r"\b(legato|legatissimo)\b", "Expr_legato", "expression:legato"),
    (r"\b(leggiero|leggieramente|leggiermente|leggierissimo|legg|leggero)\b", "Expr_leggiero",
     "expression:leggiero"),
    (r"\b(sostenuto|sosten|sost)\b", "Expr_sostenuto", "expression:sostenuto"),
    (r"\b(agitato|agitazione)\b", "Expr_agitato", "expression:agitato"),
    (r"\b(marcato|marc|marcatissimo)\b", "Expr_marcato", "expression:marcato"),
    (r"\b(grazioso|con grazia)\b", "Expr_grazioso", "expression:grazioso"),
    (r"\bmaestoso\b", "Expr_maestoso", "expression:maestoso"),
    (r"\b(tranquillo|tranquilo|tranquilamente)\b", "Expr_tranquillo", "expression:tranquillo"),
    (r"\b(scherzando|scherz)\b", "Expr_scherzando", "expression:scherzando"),
    (r"\b(animato|con anima)\b", "Expr_animato", "expression:animato"),
    (r"\b(appassionato|appassionata)\b", "Expr_appassionato", "expression:appassionato"),
    (r"\b(energico|con energia)\b", "Expr_energico", "expression:energico"),
    (r"\bpesante\b", "Expr_pesante", "expression:pesante"),
    (r"\b(semplice|simplice)\b", "Expr_semplice", "expression:semplice"),
    (r"\bfuoco\b", "Expr_con-fuoco", "expression:con fuoco"),
    (r"\bbrio\b", "Expr_con-brio", "expression:con brio"),
    (r"\bsotto voce\b", "Expr_sotto-voce", "expression:sotto voce"),
    (r"\b(una corda|u\. ?c\.)\b", "Expr_una-corda", "expression:una corda"),
    (r"\b(tre corde|tutte le corde|t\. ?c\.)\b", "Expr_tre-corde", "expression:tre corde"),
    (r"\b(ten|tenuto|tenute)\b", "Expr_tenuto", "expression:tenuto"),
    (r"\b(staccato|stacc|staccatissimo)\b", "Expr_staccato", "expression:staccato"),
    (r"\b(calmato|calmando)\b", "Expr_calmato", "expression:calmato"),
    (r"\blusingando\b", "Expr_lusingando", "expression:lusingando"),
    (r"\b(delicato|delicatissimo)\b", "Expr_delicato", "expression:delicato"),
    (r"\b(misterioso|misterioso)\b", "Expr_misterioso", "expression:misterioso"),
    (r"\brisoluto\b", "Expr_risoluto", "expression:risoluto"),
    (r"\b(giocoso|scherzoso)\b", "Expr_giocoso", "expression:giocoso"),
)
_WORD_PATTERNS = tuple((re.compile(pattern), token, kind) for pattern, token, kind in _WORD_RULES)
_TEMPO_WORD_PATTERNS = tuple(
    (re.compile(rf"\b{word}\b" if word != "vivace" else r"\b(vivac\w*|vivo)\b"), word)
    for word in TEMPO_WORDS
)


@dataclass(frozen=True)
class DirectionEvent:
    """A direction token at a time of the unfolded score; ``kind`` is its type in the corpus report."""

    onset: float  # quarters
    token: str  # a marking token, "Tempo" (a metronome mark: one of the vocabulary's Tempo tokens) or ""
    kind: str
    qpm: float = 0.0  # the metronome mark of a "Tempo" event


@dataclass
class ScoreMarkings:
    """A score's markings as token events, and how many of each type partitura gave (``parsed``)."""

    directions: list[DirectionEvent] = field(default_factory=list)
    note_tokens: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # note id -> (token, kind)
    staff: dict[str, int] = field(default_factory=dict)  # note id -> staff (1 = upper)
    parsed: Counter = field(default_factory=Counter)

    def add_note_token(self, note_id: str, token: str, kind: str) -> None:
        self.note_tokens.setdefault(note_id, []).append((token, kind))
        self.parsed[kind] += 1


def _normalise(text: object) -> str:
    return " ".join(str(text or "").lower().split())


def classify_words(text: str) -> list[tuple[str, str]]:
    """(token, report kind) for what a direction's words say: tempo word, tempo change, loudness, expression."""
    text = _normalise(text)
    out: list[tuple[str, str]] = []
    found = sorted((m.start(), word) for pattern, word in _TEMPO_WORD_PATTERNS if (m := pattern.search(text)))
    if found:  # the word that comes first names the tempo ("Allegro moderato" is an Allegro)
        out.append((f"TempoWord_{found[0][1]}", f"tempo word:{found[0][1]}"))
    for pattern, token, kind in _WORD_PATTERNS:
        if pattern.search(text):
            out.append((token, kind))
    for word in dict.fromkeys(text.replace(".", " ").split()):  # "sempre f", "p dolce", "più f"
        level = _LEVEL_ALIASES.get(word, word)
        found = (f"Dyn_{level}", f"dynamic:{level}")
        if level in DYNAMIC_LEVELS + DYNAMIC_IMPULSES and found not in out:
            out.append(found)
    return out


def read_markings(folded, unfolded, path: Path | None = None, notes: np.ndarray | None = None) -> ScoreMarkings:
    """Markings of a partitura score: ``folded`` is the merged part, ``unfolded`` its maximal unfolding.

    Times are in quarters of ``unfolded``; note ids are those of ``unfolded.note_array()`` (the first note
    of a tied group). ``path`` (a MusicXML file) supplies what partitura does not read; ``notes`` is
    ``unfolded.note_array(include_grace_notes=True)`` when the caller has it (it is slow on large scores).
    """
    import partitura.score as ps

    marks = ScoreMarkings()
    quarter = unfolded.quarter_map
    is_musicxml = path is not None and path.suffix.lower() in (".musicxml", ".xml", ".mxl")
    extras = read_musicxml_extras(path) if is_musicxml else MusicXmlExtras()
    notes = unfolded.note_array(include_grace_notes=True) if notes is None else notes
    onsets = np.sort(np.asarray(notes["onset_quarter"], dtype=np.float64))
    _read_notes(unfolded, marks, ps)
    _read_directions(unfolded, marks, quarter, ps, extras)
    _read_tempos(unfolded, marks, quarter, ps)
    _read_fermatas(unfolded, marks, quarter, onsets, ps)
    copies = _unfolded_copies(folded, notes)
    _read_slurs(folded, marks, copies, ps)
    _count_dropped(folded, marks, extras, ps)
    if path is not None:
        marks.parsed.update(unread_markings(path, sum(1 for _ in folded.iter_all(ps.Slur))))
    for base_id in sorted(extras.arpeggiated):
        targets = copies.get(base_id, [])
        if not targets:
            marks.parsed["arpeggio"] += 1  # counted, and left out of "tokenized": its note is unknown
        for note_id, _ in targets:
            marks.add_note_token(note_id, "Arpeggio_None", "arpeggio")
    return marks


def read_markings_safely(folded, unfolded, path: Path, notes: np.ndarray | None = None) -> ScoreMarkings:
    """:func:`read_markings`, but a score whose markings cannot be read keeps its notes: the failure is
    counted in ``parsed`` (and so shows in the corpus report) instead of losing the score."""
    try:
        return read_markings(folded, unfolded, path, notes)
    except Exception as error:  # partitura objects in unforeseen states: never lose the notes for them
        marks = ScoreMarkings()
        marks.parsed[f"markings unreadable ({type(error).__name__})"] += 1
        return marks


def _count_dropped(folded, marks: ScoreMarkings, extras: MusicXmlExtras, ps) -> None:
    """Hairpins and slurs the file starts but partitura dropped (no stop): counted, so the report shows them."""
    hairpins = sum(1 for d in folded.iter_all(ps.LoudnessDirection, include_subclasses=True)
                   if getattr(d, "wedge", False))
    slurs = sum(1 for _ in folded.iter_all(ps.Slur))
    if extras.starts["hairpin"] > hairpins:
        marks.parsed["hairpin without a stop (dropped by partitura)"] += extras.starts["hairpin"] - hairpins
    if extras.starts["slur"] > slurs:
        marks.parsed["slur without a stop (dropped by partitura)"] += extras.starts["slur"] - slurs


def _tie_head(note):
    while getattr(note, "tie_prev", None) is not None:
        note = note.tie_prev
    return note


def _read_notes(part, marks: ScoreMarkings, ps) -> None:
    """Staff, grace type, articulations and ornaments of every note (first notes of tied groups)."""
    for note in part.notes_tied:
        note_id = str(note.id)
        staff = int(note.staff or 1)
        marks.staff[note_id] = min(max(staff, 1), MAX_STAFF)
        if staff > 1:
            marks.parsed[f"staff:{marks.staff[note_id]}"] += 1
        if isinstance(note, ps.GraceNote):
            grace = "acciaccatura" if note.grace_type == "acciaccatura" else "appoggiatura"
            marks.add_note_token(note_id, f"Grace_{grace}", f"grace:{note.grace_type}")
        for name in dict.fromkeys(note.articulations or ()):
            if name in _BREAKS:
                marks.add_note_token(note_id, _BREAKS[name], f"articulation:{name}")
            else:
                token = name if name in ARTICULATIONS else "other"
                marks.add_note_token(note_id, f"Artic_{token}", f"articulation:{name}")
        for name in dict.fromkeys(note.ornaments or ()):
            marks.add_note_token(note_id, f"Orn_{_ORNAMENT_NAMES.get(name, 'other')}", f"ornament:{name}")


def _read_directions(part, marks: ScoreMarkings, quarter, ps, extras: MusicXmlExtras) -> None:
    """Loudness, tempo, pedal and expression directions, and partitura's unparsed words."""
    items = list(part.iter_all(ps.Direction, include_subclasses=True)) + list(part.iter_all(ps.Words))
    measures = sorted(part.measures, key=lambda m: m.start.t)
    measure_starts = [m.start.t for m in measures]
    used: Counter = Counter()
    for item in items:
        start = float(quarter(item.start.t))
        end = getattr(item, "end", None)
        end_q = float(quarter(end.t)) if end is not None and end.t > item.start.t else None
        found = _direction_tokens(item, ps)
        if isinstance(item, ps.Words) and item.text == "other-dynamics":
            found = _other_dynamics(item, quarter, measures, measure_starts, extras, used)
        for token, kind in found:
            marks.parsed[kind] += 1
            if not token:
                continue
            marks.directions.append(DirectionEvent(start, token, kind))
            closing = {"Cresc_Start": "Cresc_End", "Dim_Start": "Dim_End", "PedalMark_Start": "PedalMark_End"}
            if token in closing and end_q is not None:
                marks.directions.append(DirectionEvent(end_q, closing[token], f"{kind} end"))
                marks.parsed[f"{kind} end"] += 1


def _other_dynamics(item, quarter, measures, measure_starts, extras: MusicXmlExtras, used: Counter
                    ) -> list[tuple[str, str]]:
    """Tokens of an ``<other-dynamics>`` partitura kept without its text: the text read from the MusicXML."""
    k = bisect.bisect_right(measure_starts, item.start.t) - 1
    if k < 0 or not extras.other_dynamics:
        return [("", "other-dynamics (text not found)")]
    measure = measures[k]
    offset = round(float(quarter(item.start.t) - quarter(measure.start.t)), 4)
    key = (measure.number, offset, item.staff)
    texts = extras.other_dynamics.get(key) or extras.other_dynamics.get((measure.number, offset, None)) or []
    slot = (measure.start.t, key)
    index = used[slot]
    used[slot] += 1
    if index >= len(texts):
        return [("", "other-dynamics (text not found)")]
    return classify_words(texts[index]) or [("", "other-dynamics (unrecognised)")]


def _direction_tokens(item, ps) -> list[tuple[str, str]]:
    """(token, report kind) of one partitura direction; unknown ones get a kind and no token."""
    text = _normalise(getattr(item, "text", ""))
    if isinstance(item, ps.SustainPedalDirection):
        return [("PedalMark_Start", "pedal")]
    if isinstance(item, ps.OctaveShiftDirection):
        return [("", "octave shift (pitches already shifted)")]
    if isinstance(item, ps.IncreasingLoudnessDirection):
        return [("Cresc_Start", "crescendo" if getattr(item, "wedge", False) else "crescendo (words)")]
    if isinstance(item, ps.DecreasingLoudnessDirection):
        return [("Dim_Start", "diminuendo" if getattr(item, "wedge", False) else "diminuendo (words)")]
    if isinstance(item, (ps.ConstantLoudnessDirection, ps.ImpulsiveLoudnessDirection)):
        level = _LEVEL_ALIASES.get(text, text)
        if level in DYNAMIC_LEVELS + DYNAMIC_IMPULSES:
            return [(f"Dyn_{level}", f"dynamic:{level}")]
    found = classify_words(text)
    if found:
        return found
    if isinstance(item, ps.ResetTempoDirection):
        return [("TempoChange_atempo", "tempo change:a tempo")]
    if isinstance(item, ps.IncreasingTempoDirection):
        return [("TempoChange_accel", "tempo change:accel")]
    if isinstance(item, ps.DecreasingTempoDirection):
        return [("TempoChange_rit", "tempo change:rit")]
    if isinstance(item, (ps.ConstantLoudnessDirection, ps.ImpulsiveLoudnessDirection)):
        return [("", f"dynamic (unsupported):{text}")]
    if isinstance(item, ps.Words):  # fingerings, tuplet numbers, titles, hand signs (m.d.), "simile", ...
        return [("", "words (unrecognised)" if re.search(r"[a-z]", text) else "words (numbers, signs)")]
    return [("Expr_other", f"expression (other):{type(item).__name__}")]


def _read_tempos(part, marks: ScoreMarkings, quarter, ps) -> None:
    for tempo in part.iter_all(ps.Tempo):
        qpm = 60e6 / float(tempo.microseconds_per_quarter or 0) if tempo.microseconds_per_quarter else 0.0
        if not (np.isfinite(qpm) and qpm > 0):
            marks.parsed["tempo mark (no number)"] += 1
            continue
        marks.directions.append(DirectionEvent(float(quarter(tempo.start.t)), "Tempo", "tempo mark", qpm))
        marks.parsed["tempo mark"] += 1


def _read_fermatas(part, marks: ScoreMarkings, quarter, onsets: np.ndarray, ps) -> None:
    """A note's fermata sits at the note; a barline's at the last onset before the barline (the held chord)."""
    for fermata in part.iter_all(ps.Fermata):
        q = float(quarter(fermata.start.t))
        if isinstance(fermata.ref, ps.GenericNote):  # a note, grace note or rest
            kind = "fermata:rest" if isinstance(fermata.ref, ps.Rest) else "fermata:note"
            marks.directions.append(DirectionEvent(q, "Fermata_Note", kind))
            marks.parsed[kind] += 1
            continue
        before = onsets[onsets < q - 1e-9]
        marks.directions.append(DirectionEvent(float(before[-1]) if len(before) else q, "Fermata_Barline",
                                               "fermata:barline"))
        marks.parsed["fermata:barline"] += 1


def _unfolded_copies(folded, notes: np.ndarray) -> dict[str, list[tuple[str, float]]]:
    """Folded note id -> (unfolded id, onset in quarters) of each of its copies, in time order."""
    folded_ids = {str(n.id) for n in folded.notes}
    copies: dict[str, list[tuple[str, float]]] = {}
    for note_id, onset in zip(notes["id"], notes["onset_quarter"], strict=True):
        note_id = str(note_id)
        base = note_id if note_id in folded_ids else note_id.rsplit("-", 1)[0]
        if base in folded_ids:
            copies.setdefault(base, []).append((note_id, float(onset)))
    for targets in copies.values():
        targets.sort(key=lambda item: item[1])
    return copies


def _read_slurs(folded, marks: ScoreMarkings, copies: dict[str, list[tuple[str, float]]], ps) -> None:
    """Slurs of the folded part on every unfolded copy of their start note (the end copy of the same pass,
    else the next copy of the end note after the start)."""
    for slur in folded.iter_all(ps.Slur):
        start = copies.get(str(_tie_head(slur.start_note).id), []) if slur.start_note is not None else []
        if not start:
            marks.parsed["slur"] += 1  # no note to attach to: counted, never tokenized
            continue
        ends = copies.get(str(_tie_head(slur.end_note).id), []) if slur.end_note is not None else []
        for start_id, start_q in start:
            marks.add_note_token(start_id, "Slur_Start", "slur")
            suffix = start_id[len(str(_tie_head(slur.start_note).id)):]
            same_pass = [e for e in ends if e[0].endswith(suffix) and e[1] >= start_q] if suffix else []
            later = same_pass or [e for e in ends if e[1] >= start_q]
            if later:
                marks.add_note_token(later[0][0], "Slur_End", "slur end")
            else:
                marks.parsed["slur end"] += 1  # a slur without an end note: counted, not tokenized


@dataclass
class MusicXmlExtras:
    """What partitura does not keep from a MusicXML file: arpeggiated note ids and ``<other-dynamics>`` texts
    (partitura makes them ``Words('other-dynamics')``), the latter by (measure index, offset in quarters, staff)."""

    arpeggiated: set[str] = field(default_factory=set)
    other_dynamics: dict[tuple[int, float, int | None], list[str]] = field(default_factory=dict)
    starts: Counter = field(default_factory=Counter)  # "hairpin" / "slur": starts written in the file


def read_musicxml_extras(path: Path) -> MusicXmlExtras:
    """Walk the MusicXML as partitura does (measure index from 1 per part, ``backup``/``forward``, chords)."""
    from lxml import etree

    extras = MusicXmlExtras()
    try:
        if path.suffix.lower() == ".mxl":
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist()
                         if not n.startswith("META-INF") and n.lower().endswith((".xml", ".musicxml"))]
                if not names:
                    return extras
                root = etree.fromstring(archive.read(names[0]))
        else:
            root = etree.parse(str(path)).getroot()
    except (OSError, zipfile.BadZipFile, etree.XMLSyntaxError):
        return extras
    for part in root.iter("part"):
        divisions, position = 1.0, 0.0
        for index, measure in enumerate(part.findall("measure"), start=1):
            position = 0.0
            for element in measure:
                if element.tag == "attributes" and element.findtext("divisions"):
                    divisions = float(element.findtext("divisions") or 1) or 1.0
                elif element.tag == "note":
                    extras.starts["slur"] += len(element.findall("notations/slur[@type='start']"))
                    if element.find("notations/arpeggiate") is not None:
                        extras.arpeggiated.add(element.get("id") or element.get("ID") or "")
                    if element.find("chord") is None and element.find("grace") is None:
                        position += _duration(element)
                elif element.tag in ("backup", "forward"):
                    position += _duration(element) * (-1 if element.tag == "backup" else 1)
                elif element.tag == "direction":
                    staff = int(element.findtext("staff")) if (element.findtext("staff") or "").isdigit() else None
                    key = (index, round(position / divisions, 4), staff)
                    extras.starts["hairpin"] += sum(w.get("type") in ("crescendo", "diminuendo")
                                                    for w in element.iterfind("direction-type/wedge"))
                    for item in element.iterfind("direction-type/dynamics/other-dynamics"):
                        extras.other_dynamics.setdefault(key, []).append(item.text or "")
    return extras


def _duration(element) -> float:
    try:
        return float(element.findtext("duration") or 0)
    except ValueError:
        return 0.0


# ------------------------------------------------------------------------------------------- writing


def note_attributes(marks: ScoreMarkings, note_ids: list[str], token_ids: dict[str, int]
                    ) -> tuple[list[int], list[tuple[int, ...]]]:
    """Per note (in ``note_ids`` order): its staff and its attribute token ids, in vocabulary order."""
    staffs, attributes = [], []
    for note_id in note_ids:
        staffs.append(marks.staff.get(note_id, 1))
        tokens = {token_ids[token] for token, _ in marks.note_tokens.get(note_id, ())}
        attributes.append(tuple(sorted(tokens)))
    return staffs, attributes


def count_note_tokens(marks: ScoreMarkings, note_ids: list[str], written: list[bool]) -> Counter:
    """Note markings (and staves) that reached a token: those of the notes the writer kept."""
    out: Counter = Counter()
    for note_id, kept in zip(note_ids, written, strict=True):
        if not kept:
            continue
        staff = marks.staff.get(note_id, 1)
        if staff > 1:
            out[f"staff:{staff}"] += 1
        for _, kind in marks.note_tokens.get(note_id, ()):
            out[kind] += 1
    return out


def place_directions(writer, marks: ScoreMarkings) -> Counter:
    """Write the direction events at their (bar, position) on ``writer`` (a BarWriter); count them by kind."""
    grid, vocab = writer.grid, writer.vocab
    out: Counter = Counter()
    if not marks.directions:
        return out
    onsets = np.array([event.onset for event in marks.directions], dtype=np.float64)
    bars, positions = grid.snap(grid.quarter_to_tick(onsets))
    for event, bar, pos in zip(marks.directions, bars, positions, strict=True):
        if event.token == "Tempo":
            writer.add_tempo(int(bar), int(pos), vocab.tempo_index(event.qpm))
        else:
            writer.add_direction(int(bar), int(pos), vocab.ids[event.token])
        out[event.kind] += 1
    return out

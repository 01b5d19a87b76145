"""Markings an MEI or kern file writes that partitura 1.9 does not read: counted, so no marking goes unnoticed.

partitura's MEI reader keeps notes, staves and grace notes (no dynamics, articulations, slurs, fermatas);
its kern reader keeps notes, spines (staves) and slurs. What they skip cannot become a token, but the
corpus report and ``imf tokenize --show`` list it by type, with 0 tokens, under "(not read by partitura)".
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

_MEI_ELEMENTS = {"dynam": "dynamic", "hairpin": "hairpin", "tempo": "tempo", "fermata": "fermata",
                 "pedal": "pedal", "trill": "trill", "mordent": "mordent", "turn": "turn", "arpeg": "arpeggio",
                 "breath": "breath mark", "caesura": "caesura", "dir": "words", "artic": "articulation",
                 "slur": "slur"}
# kern signs on a note token (Humdrum **kern reference): articulations, ornaments, fermata, arpeggio, breath
_KERN_SIGNS = {"'": "staccato", "`": "staccatissimo", "~": "tenuto", "^": "accent", ";": "fermata",
               "T": "trill", "t": "trill", "M": "mordent", "m": "mordent", "W": "mordent", "w": "mordent",
               "S": "turn", "$": "turn", ":": "arpeggio", ",": "breath mark"}
_KERN_NOTE = re.compile(r"[a-gA-G]")


def unread_markings(path: Path, slurs_read: int) -> Counter:
    """Per type, the markings of an MEI or kern file that partitura left out (empty for other formats)."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".mei":
            found = _mei_markings(path)
            prefix = "MEI"
        elif suffix in (".krn", ".kern"):
            found = _kern_markings(path.read_text(encoding="utf-8", errors="replace"))
            prefix = "kern"
        else:
            return Counter()
    except (OSError, ValueError):
        return Counter()
    found["slur"] = max(found["slur"] - slurs_read, 0)  # partitura reads kern slurs (and may read MEI's)
    return Counter({f"{prefix} {kind} (not read by partitura)": n for kind, n in found.items() if n > 0})


def _mei_markings(path: Path) -> Counter:
    from lxml import etree

    out: Counter = Counter()
    try:
        root = etree.parse(str(path)).getroot()
    except etree.XMLSyntaxError as error:
        raise ValueError(str(error)) from None
    for element in root.iter():
        if not isinstance(element.tag, str):
            continue
        name = etree.QName(element).localname
        if name in _MEI_ELEMENTS:
            out[_MEI_ELEMENTS[name]] += 1 if name != "artic" or not element.get("artic") else 0
        if name in ("note", "chord", "artic") and element.get("artic"):
            out["articulation"] += len(element.get("artic").split())
        if name in ("note", "chord", "rest") and element.get("fermata"):
            out["fermata"] += 1
    return out


def _kern_markings(text: str) -> Counter:
    """Signs on **kern note tokens and the entries of **dynam spines (files without spine splits)."""
    out: Counter = Counter()
    kinds: list[str] = []
    for line in text.splitlines():
        if not line or line.startswith("!"):
            continue
        fields = line.split("\t")
        if line.startswith("**"):
            kinds = fields
            continue
        if line.startswith(("*", "=")):
            continue
        for index, field in enumerate(fields):
            kind = kinds[index] if index < len(kinds) and len(kinds) == len(fields) else "**kern"
            if field == "." or not field:
                continue
            if kind == "**dynam":
                out["dynamic"] += 1
            elif kind == "**kern":
                for note in field.split(" "):
                    if _KERN_NOTE.search(note) and "r" not in note:
                        for sign in dict.fromkeys(c for c in note if c in _KERN_SIGNS):
                            out[_KERN_SIGNS[sign]] += 1
                        out["slur"] += note.count("(")
    return out

"""What to evaluate: one job per score, from a manifest CSV or from the (n)ASAP corpus and a renderings folder.

Rendering file names in folder mode: the (n)ASAP piece folder with ``/`` replaced by ``__`` plus ``.mid``
(or ``.midi``), e.g. ``Bach/Prelude/bwv_854`` -> ``Bach__Prelude__bwv_854.mid``.

Human performances: a performance MIDI ``P.mid`` is linked to its score through the (n)ASAP note alignment
``P_note_alignments/note_alignment.tsv`` beside it; a human without one is aligned with parangonar (manifest
mode only; (n)ASAP humans always have theirs). In (n)ASAP mode only performances with
``robust_note_alignment == 1`` are used as references (data.md: the others are usable at beat level at most);
``include_nonrobust=True`` takes them all.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError

RENDERING_SUFFIXES = (".mid", ".midi")
_SPLITS = {"train": "train", "val": "validation", "valid": "validation", "validation": "validation", "test": "test"}


@dataclass(frozen=True)
class HumanRef:
    midi: Path
    alignment: Path | None  # (n)ASAP note_alignment.tsv; None: align with parangonar


@dataclass
class PieceJob:
    name: str
    score: Path
    rendering: Path | None = None
    humans: list[HumanRef] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)  # known before running: {"path", "reason"}


def rendering_name(folder: str) -> str:
    """File stem of the rendering of (n)ASAP piece ``folder`` (e.g. ``Bach__Prelude__bwv_854``)."""
    return folder.strip("/").replace("/", "__")


def default_alignment(midi: Path) -> Path:
    return midi.with_name(f"{midi.stem}_note_alignments") / "note_alignment.tsv"


def _split_list(value: str | None) -> list[str]:
    return [item.strip() for item in (value or "").split(";") if item.strip()]


def _piece_name(score: Path) -> str:
    """A piece's name from its score path: the folder for (n)ASAP-style names (xml_score.musicxml), else the stem."""
    generic = score.stem in ("xml_score", "midi_score", "score")
    return str(score.parent) if generic else str(score.parent / score.stem)


def manifest_jobs(manifest: Path) -> list[PieceJob]:
    """Jobs from a CSV with column ``score`` and any of ``rendering``, ``humans``, ``human_alignments``, ``name``.

    ``humans`` and ``human_alignments`` are ``;``-separated lists (paired by position when both are given; an
    alignment alone implies its MIDI by (n)ASAP naming). Relative paths are relative to the manifest's folder.
    Missing files are not an error here: the run reports them as skipped.
    """
    if not manifest.is_file():
        raise UserError(f"{manifest}: manifest not found")
    base = manifest.parent
    try:
        with open(manifest, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns = set(reader.fieldnames or [])
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise UserError(f"{manifest}: cannot read CSV ({error})") from error
    if "score" not in columns:
        raise UserError(f"{manifest}: missing column 'score' (columns: score,rendering,humans[,human_alignments])")
    if not columns & {"rendering", "humans", "human_alignments"}:
        raise UserError(f"{manifest}: needs a 'rendering', 'humans' or 'human_alignments' column")

    def resolve(value: str) -> Path:
        path = Path(value)
        return path if path.is_absolute() else base / path

    jobs = []
    for line, row in enumerate(rows, start=2):
        score = (row.get("score") or "").strip()
        if not score:
            raise UserError(f"{manifest}:{line}: empty 'score'")
        midis = [resolve(v) for v in _split_list(row.get("humans"))]
        alignments = [resolve(v) for v in _split_list(row.get("human_alignments"))]
        if midis and alignments and len(midis) != len(alignments):
            raise UserError(
                f"{manifest}:{line}: {len(midis)} humans but {len(alignments)} human_alignments (pair them by position)"
            )
        humans: list[HumanRef] = []
        if midis:
            for i, midi in enumerate(midis):
                alignment = alignments[i] if alignments else default_alignment(midi)
                humans.append(HumanRef(midi, alignment if alignments or alignment.is_file() else None))
        else:
            for alignment in alignments:
                folder = alignment.parent
                stem = folder.name[: -len("_note_alignments")] if folder.name.endswith("_note_alignments") else ""
                if not stem:
                    raise UserError(
                        f"{manifest}:{line}: cannot find the MIDI of {alignment} "
                        "(expected P_note_alignments/note_alignment.tsv beside P.mid); add a 'humans' column"
                    )
                humans.append(HumanRef(folder.parent / f"{stem}.mid", alignment))
        rendering = (row.get("rendering") or "").strip()
        name = (row.get("name") or "").strip() or _piece_name(Path(score))
        jobs.append(PieceJob(name, resolve(score), resolve(rendering) if rendering else None, humans))
    return jobs


def find_metadata(root: Path, metadata: Path | None) -> Path:
    if metadata is not None:
        if not metadata.is_file():
            raise UserError(f"{metadata}: metadata file not found")
        return metadata
    for candidate in (root / "nasap_metadata_shipped.csv", root.parent / "nasap_metadata_shipped.csv"):
        if candidate.is_file():
            return candidate
    raise UserError(f"{root}: no nasap_metadata_shipped.csv beside the corpus; pass --metadata FILE")


def nasap_jobs(
    root: Path,
    metadata: Path | None,
    split: str,
    renderings: Path | None = None,
    include_nonrobust: bool = False,
) -> tuple[list[PieceJob], list[dict[str, str]]]:
    """One job per (n)ASAP piece of ``split``; also the renderings that match no piece (as skipped entries)."""
    if not root.is_dir():
        raise UserError(f"{root}: not an (n)ASAP directory (unpack the archive first)")
    if split not in _SPLITS:
        raise UserError(f"--split must be one of {', '.join(sorted(_SPLITS))}, not {split!r}")
    if renderings is not None and not renderings.is_dir():
        raise UserError(f"{renderings}: renderings folder not found")
    table = find_metadata(root, metadata)
    with open(table, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        needed = {"folder", "xml_score", "midi_performance", "acpas_split"}
        if not needed <= set(reader.fieldnames or []):
            missing = ", ".join(sorted(needed - set(reader.fieldnames or [])))
            raise UserError(f"{table}: not an (n)ASAP metadata table (missing column(s) {missing})")
        rows = [r for r in reader if _SPLITS.get((r.get("acpas_split") or "").strip()) == _SPLITS[split]]
    jobs: dict[str, PieceJob] = {}
    for row in rows:
        folder = row["folder"].strip()
        job = jobs.get(folder)
        if job is None:
            job = jobs[folder] = PieceJob(folder, root / (row.get("xml_score") or f"{folder}/xml_score.musicxml"))
            if (row.get("xml_score_available") or "True").strip() == "False":
                job.skipped.append({"path": str(job.score), "reason": "score not available in (n)ASAP"})
        midi = root / row["midi_performance"].strip()
        alignment_column = (row.get("note_alignments_fixed") or row.get("note_alignments") or "").strip()
        alignment = root / alignment_column if alignment_column else default_alignment(midi)
        robust = (row.get("robust_note_alignment") or "").strip() in ("1", "1.0", "True")
        if not robust and not include_nonrobust:
            job.skipped.append({"path": str(midi), "reason": "robust_note_alignment=0 (not used as a reference)"})
            continue
        job.humans.append(HumanRef(midi, alignment))
    unmatched: list[dict[str, str]] = []
    if renderings is not None:
        by_name = {rendering_name(folder): job for folder, job in jobs.items()}
        for path in sorted(renderings.iterdir()):
            if path.suffix.lower() not in RENDERING_SUFFIXES:
                continue
            job = by_name.get(path.stem)
            if job is None:
                unmatched.append({"path": str(path), "reason": f"no {split} piece named {path.stem!r}"})
            elif job.rendering is not None:
                unmatched.append({"path": str(path), "reason": f"second rendering of {job.name}; kept {job.rendering}"})
            else:
                job.rendering = path
    return sorted(jobs.values(), key=lambda j: j.name), unmatched

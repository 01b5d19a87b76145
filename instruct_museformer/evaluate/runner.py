"""Evaluate pieces in worker processes and assemble the JSON report and the printed table.

Per piece, three systems are compared with the piece's human performances: the ``rendering`` (if any), the
``deadpan`` (the score played mechanically) and the ``ceiling`` (each human against the other humans, a
leave-one-out estimate of how close two good performances are). ``overall`` is the mean over pieces of each
per-piece figure (a macro average; every piece counts once whatever its length or number of humans).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..files import write_text_atomic
from .compare import METRICS, MODES, ceiling, compare, coverage_of
from .features import (
    EvaluationInputError,
    Features,
    ScoreInfo,
    align,
    extract_features,
    load_performance,
    load_score,
    read_alignment,
)
from .metrics import BINS, mean_or_none
from .sources import PieceJob

SCHEMA = "imf-evaluate/1"
SYSTEMS = ("rendering", "deadpan", "ceiling")

CONVENTIONS = {
    "alignment": "renderings and the deadpan: parangonar 3.4 DualDTWNoteMatcher against the unfolded score "
    "(partitura unfold_part_maximal(merge_parts)); humans: their (n)ASAP note_alignment.tsv",
    "tempo": "every tempo value is log seconds per QUARTER note (a time-signature change is no tempo step)",
    "tempo_onset_r": "Pearson r of the tempo at each unique score onset, to the next onset (partitura performance "
    "codec, tempo_by_average), on the onsets both performances have",
    "tempo_beat_r": "Pearson r of the tempo from each notated beat (time-signature denominator) to the next; beat "
    "times interpolated from the median performed onset of each score onset, monotonized",
    "tempo_bar_r": "Pearson r of the tempo over each bar (bar lines of the unfolded score)",
    "velocity_r": "Pearson r of MIDI velocity per score note", "velocity_mae": "mean |velocity difference|, MIDI units",
    "articulation_r": "Pearson r of log2(performed duration / (score duration x local tempo)) per score note "
    "(partitura codec articulation_log)",
    "asynchrony_r": "Pearson r, over notes of score chords, of each note's onset minus its chord's mean onset",
    "js_*": "Jensen-Shannon divergence, base 2 (0 identical .. 1 disjoint), of fixed-bin histograms (see 'bins') of "
    "the whole performance: velocity, inter-onset interval, duration, sustain-pedal CC64 value at note onsets",
    "vs_each": "against each human separately, then averaged over the humans",
    "vs_pool": "against the pointwise mean curve of the humans (JS: their pooled histogram)",
    "ceiling": "each human against the other humans of the piece (leave-one-out), averaged over the humans",
    "deadpan": "the score at constant tempo (first tempo marking, else 100 quarter notes/min), velocity 64, no pedal; "
    "written as MIDI by partitura and read back; aligned by construction (pitch + onset), not by parangonar, "
    "unless --align-deadpan",
    "coverage": "score notes matched in the performance / score notes (coverage_unisons_once: notes at one onset "
    "and pitch counted once); added = performance notes matched to none",
    "undefined": "null where a figure is undefined: fewer than 3 common points, or a flat curve "
    "(e.g. a deadpan's constant velocity has no correlation)",
    "overall": "mean over pieces of each per-piece figure (pieces where it is defined)",
    "overall_ceiling_pieces": "as overall, over only the pieces that have a ceiling (>= 2 usable humans)",
}


@dataclass(frozen=True)
class Options:
    deadpan: bool = True
    deadpan_bpm: float | None = None
    deadpan_velocity: int = 64
    deadpan_dir: Path | None = None  # keep the deadpan MIDIs here
    plot_dir: Path | None = None
    align_deadpan: bool = False  # align the deadpan with parangonar instead of by construction


def _system(features: Features, humans: list[Features]) -> dict:
    result: dict = compare(features, humans) if humans else {mode: None for mode in MODES}
    result["coverage"] = coverage_of(features)
    return result


def _performance(score: ScoreInfo, midi: Path, alignment_path: Path | None) -> Features:
    performance = load_performance(midi)
    alignment = read_alignment(alignment_path) if alignment_path is not None else align(score, performance)
    return extract_features(score, performance, alignment)


def _deadpan_features(score: ScoreInfo, midi: Path, bpm: float, use_parangonar: bool) -> Features:
    """The deadpan's alignment is known by construction; parangonar only on request (or if that fails)."""
    from .deadpan import deadpan_alignment

    performance = load_performance(midi)
    alignment = None if use_parangonar else deadpan_alignment(score, performance, bpm)
    if alignment is None or sum(a["label"] == "match" for a in alignment) < 0.9 * len(performance.note_array):
        alignment = align(score, performance)
    return extract_features(score, performance, alignment)


def evaluate_piece(job: PieceJob, options: Options) -> dict:
    """Every figure of one piece; a file that cannot be used is listed in ``skipped`` and never raises."""
    from .deadpan import write_deadpan_midi
    from .sources import rendering_name

    started = time.perf_counter()
    result: dict = {
        "name": job.name,
        "score": str(job.score),
        "rendering": str(job.rendering) if job.rendering else None,
        "humans": [],
        "skipped": list(job.skipped),
        "systems": {system: None for system in SYSTEMS},
        "error": None,
    }
    try:
        score = load_score(job.score)
        humans: list[Features] = []
        for human in job.humans:
            try:
                humans.append(_performance(score, human.midi, human.alignment))
                result["humans"].append(str(human.midi))
            except EvaluationInputError as error:
                result["skipped"].append({"path": str(human.midi), "reason": str(error)})
        rendering = deadpan = None
        if job.rendering is not None:
            try:
                rendering = _performance(score, job.rendering, None)
                result["systems"]["rendering"] = _system(rendering, humans)
            except EvaluationInputError as error:
                result["skipped"].append({"path": str(job.rendering), "reason": str(error)})
        if options.deadpan:
            with tempfile.TemporaryDirectory(prefix="imf-deadpan-") as folder:
                target = Path(options.deadpan_dir or folder) / f"{rendering_name(job.name)}.deadpan.mid"
                bpm = write_deadpan_midi(score, target, options.deadpan_bpm, options.deadpan_velocity)
                deadpan = _deadpan_features(score, target, bpm, options.align_deadpan)
            result["systems"]["deadpan"] = _system(deadpan, humans)
            result["systems"]["deadpan"]["bpm"] = round(bpm, 3)
        result["systems"]["ceiling"] = ceiling(humans)
        if options.plot_dir is not None:
            from .plots import plot_piece

            target = options.plot_dir / f"{rendering_name(job.name)}.png"
            plot_piece(target, job.name, score, rendering, humans, deadpan)
    except EvaluationInputError as error:
        result["error"] = str(error)
    except Exception as error:  # a bug or an unforeseen file problem must not abort a corpus run: report it
        last = traceback.extract_tb(error.__traceback__)[-1]
        where = f"{Path(last.filename).name}:{last.lineno}"
        result["error"] = f"internal error {type(error).__name__}: {error} (at {where})"
    result["seconds"] = round(time.perf_counter() - started, 3)
    return result


def _aggregate(pieces: list[dict]) -> dict:
    overall: dict = {}
    for system in SYSTEMS:
        rows = [p["systems"][system] for p in pieces if p["systems"].get(system)]
        entry: dict = {"pieces": len(rows)}
        for mode in MODES:
            defined = [row[mode] for row in rows if row.get(mode)]
            entry[mode] = {
                metric: {
                    "mean": _round(mean_or_none([d[metric] for d in defined])),
                    "pieces": sum(d[metric] is not None for d in defined),
                }
                for metric in METRICS
            }
        coverages = [row["coverage"] for row in rows if row.get("coverage")]
        entry["coverage"] = {
            key: _round(mean_or_none([c[key] for c in coverages]))
            for key in ("coverage", "coverage_unisons_once", "added_ratio")
        }
        overall[system] = entry
    return overall


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def run_evaluation(
    jobs: list[PieceJob],
    options: Options,
    workers: int = 1,
    progress: bool | None = None,
    extra_skipped: list[dict[str, str]] | None = None,
    command: list[str] | None = None,
) -> dict:
    """Evaluate every job (in ``workers`` processes) and return the report dict (schema ``imf-evaluate/1``)."""
    started = time.perf_counter()
    results: list[dict | None] = [None] * len(jobs)
    show = sys.stderr.isatty() if progress is None else progress
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc="evaluate", unit="piece", disable=not show)

    def done(index: int, result: dict) -> None:
        results[index] = result
        bar.update()
        if not show and progress is None and len(jobs) > 1:  # a log file: one line per piece instead of a bar
            state = f"error: {result['error']}" if result["error"] else f"{len(result['humans'])} humans"
            finished = sum(r is not None for r in results)
            print(f"evaluate [{finished}/{len(jobs)}] {result['name']}: {state}, {result['seconds']:.1f} s",
                  file=sys.stderr, flush=True)

    if workers <= 1 or len(jobs) <= 1:
        for index, job in enumerate(jobs):
            done(index, evaluate_piece(job, options))
    else:
        # the longest pieces first, so that one big piece does not start last and run alone
        order = sorted(range(len(jobs)), key=lambda i: -_size_hint(jobs[i]))
        with ProcessPoolExecutor(workers) as pool:
            futures = {pool.submit(evaluate_piece, jobs[i], options): i for i in order}
            for future in as_completed(futures):
                done(futures[future], future.result())
    bar.close()
    pieces = [r for r in results if r is not None]
    skipped = [dict(s, piece=p["name"]) for p in pieces for s in p["skipped"]]
    skipped += [dict(s, piece=None) for s in extra_skipped or []]
    return {
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "workers": workers,
        "wall_seconds": round(time.perf_counter() - started, 2),
        "piece_seconds_total": round(sum(p["seconds"] for p in pieces), 2),
        "conventions": CONVENTIONS,
        "bins": {name: [None if e == float("inf") else float(e) for e in edges] for name, edges in BINS.items()},
        "counts": {
            "pieces": len(pieces),
            "pieces_with_error": sum(p["error"] is not None for p in pieces),
            "renderings": sum(p["systems"]["rendering"] is not None for p in pieces),
            "human_performances": sum(len(p["humans"]) for p in pieces),
            "skipped_files": len(skipped),
        },
        "overall": _aggregate(pieces),
        # the same means over only the pieces with >= 2 humans, so every system is averaged over the same pieces
        "overall_ceiling_pieces": _aggregate([p for p in pieces if p["systems"]["ceiling"]]),
        "pieces": pieces,
        "skipped": skipped,
        "perplexity": None,
    }


def _size_hint(job: PieceJob) -> int:
    try:
        return job.score.stat().st_size * (1 + (job.rendering is not None)) + 1000 * len(job.humans)
    except OSError:
        return 0


def merge_perplexity(report: dict, path: Path) -> None:
    """Hook for ``imf validate``: put its JSON result (loss / perplexity of a checkpoint) under ``perplexity``."""
    from ..errors import UserError

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise UserError(f"{path}: perplexity JSON not found") from error
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise UserError(f"{path}: not a JSON file ({error})") from error
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object (the result of imf validate)")
    report["perplexity"] = {"source": str(path), **data}


def write_report(report: dict, path: Path) -> None:
    """Write the JSON report through a temporary file and a rename (never half-written)."""
    write_text_atomic(path, json.dumps(report, indent=1) + "\n")


# ------------------------------------------------------------------------------------------------ table

_COLUMNS = [
    ("tempo_onset_r", "tOn r"),
    ("tempo_beat_r", "tBeat r"),
    ("tempo_bar_r", "tBar r"),
    ("velocity_r", "vel r"),
    ("velocity_mae", "velMAE"),
    ("articulation_r", "art r"),
    ("asynchrony_r", "asyn r"),
    ("js_velocity", "JSvel"),
    ("js_ioi", "JSioi"),
    ("js_duration", "JSdur"),
    ("js_pedal", "JSped"),
]


def _cell(value: float | None, width: int, digits: int = 2) -> str:
    return ("-" if value is None else f"{value:.{digits}f}").rjust(width)


def format_table(report: dict, mode: str = "vs_each", per_piece: bool = True) -> str:
    """Plain-text table: one row per piece and system, then the overall means."""
    name_width = 36
    header = f"{'piece':<{name_width}} {'system':<9} {'n':>3} " + " ".join(f"{h:>7}" for _, h in _COLUMNS)
    header += f" {'cover':>6} {'cover1':>6} {'added':>6}"
    lines = [f"figures {mode} ({CONVENTIONS[mode]}); '-' = undefined", header, "-" * len(header)]
    if per_piece:
        for piece in report["pieces"]:
            name = piece["name"][-name_width:]
            if piece["error"]:
                lines.append(f"{name:<{name_width}} error: {piece['error']}")
                continue
            for system in SYSTEMS:
                row = piece["systems"].get(system)
                if not row:
                    continue
                n = row["performances"] if system == "ceiling" else len(piece["humans"])
                values = row.get(mode) or {}
                cells = " ".join(_cell(values.get(m), 7) for m, _ in _COLUMNS)
                cover = row["coverage"]
                lines.append(
                    f"{name:<{name_width}} {system:<9} {n:>3} {cells} "
                    f"{_cell(cover['coverage'], 6, 3)} {_cell(cover['coverage_unisons_once'], 6, 3)} "
                    f"{_cell(cover['added_ratio'], 6, 3)}"
                )
        lines.append("-" * len(header))
    overall_rows = (("overall", "OVERALL (mean over pieces)"), ("overall_ceiling_pieces", "OVERALL (w/ ceiling)"))
    for key, label in overall_rows:
        for system in SYSTEMS:
            entry = report[key][system]
            if not entry["pieces"]:
                continue
            cells = " ".join(_cell(entry[mode][m]["mean"], 7) for m, _ in _COLUMNS)
            cover = entry["coverage"]
            lines.append(
                f"{label:<{name_width}} {system:<9} {entry['pieces']:>3} {cells} "
                f"{_cell(cover['coverage'], 6, 3)} {_cell(cover['coverage_unisons_once'], 6, 3)} "
                f"{_cell(cover['added_ratio'], 6, 3)}"
            )
    perplexity = report.get("perplexity") or {}
    subsets = perplexity.get("subsets") or {}
    if subsets:  # from imf validate --results-json (imf evaluate --perplexity-json)
        parts = [f"{name} {v['ppl']:.2f} ({v['loss']:.3f} bits)" for name, v in subsets.items()
                 if isinstance(v, dict) and "ppl" in v and "loss" in v]
        lines.append(f"perplexity of {perplexity.get('checkpoint', 'the model')} (imf validate): " + ", ".join(parts))
    return "\n".join(lines)

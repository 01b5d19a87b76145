"""``imf roundtrip``: performance MIDI -> tokens -> MIDI errors for one pair or an (n)ASAP corpus.

One pair::

    imf roundtrip --score S --performance P (--alignment A | --annotations B [--score-annotations C] | --match M)

A corpus (the metadata CSV of an unpacked (n)ASAP directory; ``note_alignments_fixed`` is used where
the CSV has it)::

    imf roundtrip --corpus nasap --root DIR [--metadata CSV] [--limit N] [--seed S] [--jobs J]

Prints onset error median / p95 (ms, aligned notes and all notes), velocity error against the
quantisation step, pedal-change error (ms), tokens per bar / per piece and seconds per pair.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from ..errors import UserError

SOURCES = ("alignment", "annotations", "annotations-midi", "match")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="imf roundtrip", description=__doc__.split("\n\n")[0])
    p.add_argument("--score", type=Path, help="score file (MusicXML, MEI, kern or MIDI)")
    p.add_argument("--performance", type=Path, help="performance MIDI")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--alignment", type=Path, help="(n)ASAP note_alignment.tsv")
    g.add_argument("--annotations", type=Path, help="ASAP beat annotations of the performance")
    g.add_argument("--match", type=Path, help="match file")
    p.add_argument("--score-annotations", type=Path, help="beat annotations of a MIDI score")
    p.add_argument("--corpus", choices=["nasap"], help="measure over a corpus instead of one pair")
    p.add_argument("--root", type=Path, help="unpacked (n)ASAP directory (holds metadata.csv)")
    p.add_argument("--metadata", type=Path, help="metadata CSV (default: ROOT/metadata.csv)")
    p.add_argument("--source", choices=SOURCES, default="alignment",
                   help="corpus alignment source (default: note alignments); annotations-midi pairs the MIDI "
                   "score and its beat annotations with the performance's")
    p.add_argument("--limit", type=int, help="at most N performances")
    p.add_argument("--seed", type=int, help="shuffle the rows with this seed before --limit")
    p.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--tokenizer", type=Path, help="tokenizer.json (default: the project configuration)")
    p.add_argument("--json", type=Path, help="also write the per-pair and summary figures as JSON here")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.corpus:
        if args.root is None:
            raise UserError("--corpus needs --root DIR (an unpacked (n)ASAP directory)")
        jobs = _corpus_jobs(args)
        results = _run_jobs(jobs, args.tokenizer, max(1, args.jobs))
        summary = _summarise(results)
        _print_summary(summary)
    else:
        if args.score is None or args.performance is None:
            raise UserError("give --score and --performance (or --corpus nasap --root DIR)")
        if not (args.alignment or args.annotations or args.match):
            raise UserError("give one of --alignment, --annotations or --match")
        job = {"name": args.performance.name, "score": str(args.score), "performance": str(args.performance),
               "alignment": _s(args.alignment), "annotations": _s(args.annotations), "match": _s(args.match),
               "score_annotations": _s(args.score_annotations)}
        result = _run_one(job, _tokenizer(args.tokenizer))
        if "error" in result:
            raise UserError(result["error"])
        results = [result]
        summary = _summarise(results)
        _print_pair(result)
    if args.json:
        _write_json(args.json, {"summary": summary, "pairs": results})
    return 0


def _s(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _tokenizer(path: Path | None):
    from ..tokens.tokenizer import build_tokenizer, load_tokenizer

    return build_tokenizer() if path is None else load_tokenizer(path)


def _corpus_jobs(args: argparse.Namespace) -> list[dict]:
    root = args.root
    metadata = args.metadata or root / "metadata.csv"
    if not metadata.is_file():
        raise UserError(f"{metadata}: metadata CSV not found")
    try:
        with open(metadata, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise UserError(f"{metadata}: cannot read metadata CSV ({error})") from None
    if rows and not {"folder", "xml_score", "midi_performance"} <= set(rows[0]):
        raise UserError(f"{metadata}: not an (n)ASAP metadata CSV (needs folder, xml_score, midi_performance)")
    if args.seed is not None:
        random.Random(args.seed).shuffle(rows)
    jobs = []
    for row in rows:
        alignment = row.get("note_alignments_fixed") or row.get("note_alignments") or ""
        match = row.get("match_file_fixed") or row.get("match_file") or ""
        job = {"name": row["midi_performance"], "score": str(root / row["xml_score"]),
               "performance": str(root / row["midi_performance"]), "alignment": None, "annotations": None,
               "match": None, "score_annotations": None,
               "robust": row.get("robust_note_alignment", "") in ("1", "1.0", "True")}
        if args.source == "alignment":
            job["alignment"] = str(root / alignment) if alignment else None
        elif args.source == "match":
            job["match"] = str(root / match) if match else None
        else:
            annotations = row.get("performance_annotations") or ""
            job["annotations"] = str(root / annotations) if annotations else None
            if args.source == "annotations-midi":
                job["score"] = str(root / row["midi_score"])
                job["score_annotations"] = str(root / row["midi_score_annotations"])
        jobs.append(job)
        if args.limit is not None and len(jobs) >= args.limit:
            break
    return jobs


_WORKER_TOKENIZER = None


def _init_worker(path: str | None) -> None:
    global _WORKER_TOKENIZER
    warnings.simplefilter("ignore")
    _WORKER_TOKENIZER = _tokenizer(None if path is None else Path(path))


def _worker(job: dict) -> dict:
    return _run_one(job, _WORKER_TOKENIZER)


def _run_jobs(jobs: list[dict], tokenizer_path: Path | None, processes: int) -> list[dict]:
    if processes == 1:
        _init_worker(_s(tokenizer_path))
        return [_progress(i, len(jobs), _worker(job)) for i, job in enumerate(jobs)]
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(processes, _init_worker, (_s(tokenizer_path),)) as pool:
        return [_progress(i, len(jobs), r) for i, r in enumerate(pool.imap(_worker, jobs))]


def _progress(i: int, n: int, result: dict) -> dict:
    status = result.get("reason", "ok")
    print(f"[{i + 1}/{n}] {result['name']}: {status}", file=sys.stderr, flush=True)
    return result


def _run_one(job: dict, tokenizer) -> dict:
    from ..tokens.errors import TokenizationError
    from ..tokens.pair import roundtrip_errors, tokenize_pair

    out = {"name": job["name"], "robust": job.get("robust")}
    if not any(job[k] for k in ("alignment", "annotations", "match")):
        return {**out, "reason": "no alignment", "error": f"{job['performance']}: no alignment in the metadata"}
    p = {k: (Path(job[k]) if job.get(k) else None) for k in ("alignment", "annotations", "match", "score_annotations")}
    started = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pair = tokenize_pair(Path(job["score"]), Path(job["performance"]), tokenizer, **p)
            errors = roundtrip_errors(pair, tokenizer)
    except TokenizationError as error:
        return {**out, "reason": error.reason, "error": str(error)}
    return {**out, **errors, "tokenize_s": pair.seconds, "total_s": time.perf_counter() - started}


def _summarise(results: list[dict]) -> dict:
    ok = [r for r in results if "error" not in r]
    failures: dict[str, int] = {}
    for r in results:
        if "error" in r:
            failures[r["reason"]] = failures.get(r["reason"], 0) + 1
    summary: dict = {"pairs": len(results), "ok": len(ok), "failures": failures}
    if not ok:
        return summary
    med = np.array([r["onset_aligned"]["median_ms"] for r in ok if r["onset_aligned"]["n"]])
    p95 = np.array([r["onset_aligned"]["p95_ms"] for r in ok if r["onset_aligned"]["n"]])
    pmed = np.array([r["pedal"]["median_ms"] for r in ok if r["pedal"]["n"]])
    pp95 = np.array([r["pedal"]["p95_ms"] for r in ok if r["pedal"]["n"]])
    bars = np.array([r["bars"] for r in ok])
    summary.update({
        "onset_aligned_median_ms": {"median_over_pairs": float(np.median(med)), "worst_pair": float(med.max())},
        "onset_aligned_p95_ms": {"median_over_pairs": float(np.median(p95)), "worst_pair": float(p95.max())},
        "onset_all_p95_ms_worst_pair": float(max(r["onset_all"]["p95_ms"] for r in ok)),
        "pairs_within_onset_targets": float(np.mean((med <= 10.0) & (p95 <= 30.0))),
        "velocity_max_error": int(max(r["velocity"]["max_error"] for r in ok)),
        "velocity_step": ok[0]["velocity"]["step"],
        "velocity_within_step": float(np.mean([r["velocity"]["within_step"] for r in ok])),
        "pedal_median_ms": {"median_over_pairs": float(np.median(pmed)) if len(pmed) else None,
                            "worst_pair": float(pmed.max()) if len(pmed) else None},
        "pedal_p95_ms": {"median_over_pairs": float(np.median(pp95)) if len(pp95) else None,
                         "worst_pair": float(pp95.max()) if len(pp95) else None},
        "pairs_within_pedal_target": float(np.mean(pp95 <= 30.0)) if len(pp95) else None,
        "bar_agreement": {"mean": float(np.mean([r["bar_agreement"] for r in ok])),
                          "worst_pair": float(min(r["bar_agreement"] for r in ok))},
        "bars_per_piece": float(bars.mean()),
        "score_tokens_per_bar": float(sum(r["score_tokens"] for r in ok) / bars.sum()),
        "perf_tokens_per_bar": float(sum(r["perf_tokens"] for r in ok) / bars.sum()),
        "perf_tokens_per_piece": {"mean": float(np.mean([r["perf_tokens"] for r in ok])),
                                  "max": int(max(r["perf_tokens"] for r in ok))},
        "score_tokens_per_piece": {"mean": float(np.mean([r["score_tokens"] for r in ok])),
                                   "max": int(max(r["score_tokens"] for r in ok))},
        "seconds_per_pair": float(np.mean([r["total_s"] for r in ok])),
    })
    return summary


def _fmt(stats: dict) -> str:
    if not stats.get("n"):
        return "n=0"
    return (f"median {stats['median_ms']:.1f} ms, p95 {stats['p95_ms']:.1f} ms, max {stats['max_ms']:.1f} ms"
            f" (n={stats['n']})")


def _print_pair(r: dict) -> None:
    print(f"{r['name']}: {r['bars']} bars, {r['score_tokens']} score / {r['perf_tokens']} performance tokens")
    print(f"  onset (aligned notes): {_fmt(r['onset_aligned'])}")
    print(f"  onset (all notes):     {_fmt(r['onset_all'])}")
    v = r["velocity"]
    print(f"  velocity: max error {v['max_error']} (step {v['step']:.0f}),"
          f" within one step {100 * v['within_step']:.1f}%")
    print(f"  pedal changes: {_fmt(r['pedal'])}")
    print(f"  aligned notes in the same bar on both sides: {100 * r['bar_agreement']:.2f}%")
    print(f"  {r['total_s']:.2f} s")


def _print_summary(s: dict) -> None:
    print(f"pairs: {s['pairs']}, tokenized: {s['ok']}, failed: {s['failures'] or 0}")
    if not s["ok"]:
        return
    for key in ("onset_aligned_median_ms", "onset_aligned_p95_ms", "pedal_median_ms", "pedal_p95_ms"):
        print(f"  {key}: median over pairs {s[key]['median_over_pairs']}, worst pair {s[key]['worst_pair']}")
    print(f"  onset (all notes) p95, worst pair: {s['onset_all_p95_ms_worst_pair']:.1f} ms")
    print(f"  pairs within onset targets (median<=10, p95<=30 ms): {100 * s['pairs_within_onset_targets']:.1f}%")
    print(f"  pairs within pedal target (p95<=30 ms): {s['pairs_within_pedal_target']}")
    print(f"  velocity: max error {s['velocity_max_error']} (step {s['velocity_step']:.0f}),"
          f" within one step {100 * s['velocity_within_step']:.1f}%")
    print(f"  aligned notes in the same bar on both sides: mean {100 * s['bar_agreement']['mean']:.2f}%,"
          f" worst pair {100 * s['bar_agreement']['worst_pair']:.2f}%")
    print(f"  bars per piece {s['bars_per_piece']:.1f}; tokens per bar: score {s['score_tokens_per_bar']:.1f},"
          f" performance {s['perf_tokens_per_bar']:.1f}")
    print(f"  tokens per piece: score {s['score_tokens_per_piece']}, performance {s['perf_tokens_per_piece']}")
    print(f"  seconds per pair: {s['seconds_per_pair']:.2f}")


def _write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=float), encoding="utf-8")
    tmp.replace(path)

"""``imf evaluate``: renderings vs human performances, with the deadpan baseline and the human ceiling."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..errors import UserError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imf evaluate",
        description="Compare rendered performances (MIDI) with the human performances of the same scores: tempo, "
        "velocity, articulation and asynchrony correlations, JS divergences, note coverage; with a DEADPAN "
        "baseline and the human leave-one-out ceiling. Writes a JSON report and prints a table.",
        epilog="(n)ASAP folder mode: a rendering of piece Composer/Group/Piece is named "
        "Composer__Group__Piece.mid. Manifest mode: CSV columns score,rendering,humans[,human_alignments,name], "
        "lists separated by ';'. See docs/evaluation.md.",
        allow_abbrev=False,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--manifest", type=Path, help="CSV with columns score,rendering,humans[,human_alignments]")
    source.add_argument("--corpus", choices=["nasap"], help="evaluate every piece of an (n)ASAP split; needs --root")
    parser.add_argument("--root", type=Path, help="unpacked (n)ASAP directory")
    parser.add_argument("--metadata", type=Path, help="(n)ASAP metadata CSV with an acpas_split column")
    parser.add_argument("--split", default="test", help="(n)ASAP split: train, validation (val) or test")
    parser.add_argument("--renderings", type=Path, help="folder of renderings named <piece folder, / -> __>.mid")
    parser.add_argument("--deadpan-only", action="store_true", help="ignore renderings: deadpan and ceiling only")
    parser.add_argument("--no-deadpan", action="store_true", help="skip the deadpan baseline")
    parser.add_argument("--deadpan-bpm", type=float, default=None, help="deadpan tempo (default: score marking/100)")
    parser.add_argument("--deadpan-velocity", type=int, default=64, help="deadpan MIDI velocity (default 64)")
    parser.add_argument(
        "--align-deadpan", action="store_true", help="align the deadpan with parangonar (default: by construction)"
    )
    parser.add_argument("--save-deadpan", type=Path, default=None, help="keep the deadpan MIDIs in this folder")
    parser.add_argument(
        "--include-nonrobust", action="store_true", help="(n)ASAP: also use humans with robust_note_alignment=0"
    )
    parser.add_argument("--pieces", action="append", default=None, help="only pieces whose name contains this")
    parser.add_argument("--limit", type=int, default=None, help="only the first N pieces (smoke tests)")
    parser.add_argument("--out", type=Path, default=Path("evaluation.json"), help="JSON report file")
    parser.add_argument("--plot", type=Path, default=None, metavar="DIR", help="write tempo/velocity plots (PNG)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    parser.add_argument("--table", choices=["vs_each", "vs_pool"], default="vs_each", help="figures in the table")
    parser.add_argument("--overall-only", action="store_true", help="print only the overall rows")
    parser.add_argument(
        "--perplexity-json",
        type=Path,
        default=None,
        help="merge the JSON result of 'imf validate' (loss/perplexity) into the report under 'perplexity'",
    )
    return parser


def main(argv: list[str]) -> int:
    from ..evaluate.runner import Options, format_table, merge_perplexity, run_evaluation, write_report
    from ..evaluate.sources import manifest_jobs, nasap_jobs

    args = build_parser().parse_args(argv)
    if args.deadpan_only and args.no_deadpan:
        raise UserError("--deadpan-only and --no-deadpan together leave nothing but the ceiling; drop one")
    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be at least 1, not {args.workers}")
    if not 1 <= args.deadpan_velocity <= 127:
        raise UserError(f"--deadpan-velocity must be 1..127, not {args.deadpan_velocity}")
    if args.deadpan_bpm is not None and not 10 <= args.deadpan_bpm <= 400:
        raise UserError(f"--deadpan-bpm must be 10..400, not {args.deadpan_bpm}")
    unmatched: list[dict[str, str]] = []
    if args.corpus == "nasap":
        if args.root is None:
            raise UserError("--corpus nasap needs --root DIR (the unpacked (n)ASAP folder)")
        renderings = None if args.deadpan_only else args.renderings
        jobs, unmatched = nasap_jobs(args.root, args.metadata, args.split, renderings, args.include_nonrobust)
    else:
        if args.renderings is not None:
            raise UserError("--renderings is for --corpus nasap; a manifest names its renderings itself")
        jobs = manifest_jobs(args.manifest)
        if args.deadpan_only:
            for job in jobs:
                job.rendering = None
    if args.pieces:
        jobs = [job for job in jobs if any(part in job.name for part in args.pieces)]
    if args.limit is not None:
        jobs = jobs[: args.limit]
    if not jobs:
        raise UserError("no pieces to evaluate")
    report_extra = None
    if args.perplexity_json is not None:  # read it first: a bad file must fail before a long run
        probe: dict = {}
        merge_perplexity(probe, args.perplexity_json)
        report_extra = probe["perplexity"]
    workers = max(1, min(args.workers or os.cpu_count() or 1, len(jobs)))
    options = Options(
        deadpan=not args.no_deadpan,
        deadpan_bpm=args.deadpan_bpm,
        deadpan_velocity=args.deadpan_velocity,
        deadpan_dir=args.save_deadpan,
        plot_dir=args.plot,
        align_deadpan=args.align_deadpan,
    )
    report = run_evaluation(jobs, options, workers, extra_skipped=unmatched, command=["imf", "evaluate", *argv])
    report["perplexity"] = report_extra
    write_report(report, args.out)
    print(format_table(report, args.table, per_piece=not args.overall_only))
    counts = report["counts"]
    print(
        f"{counts['pieces']} pieces ({counts['pieces_with_error']} with errors), {counts['renderings']} renderings, "
        f"{counts['human_performances']} human performances, {counts['skipped_files']} files skipped; "
        f"wall time {report['wall_seconds']:.1f} s with {workers} workers; report in {args.out}"
    )
    if counts["pieces_with_error"] or counts["skipped_files"]:
        print(f"skipped files and errors are listed in {args.out} ('skipped', pieces[].error)", file=sys.stderr)
    return 0

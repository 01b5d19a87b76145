"""Render a list of jobs with several worker processes (GPU and CPU at once) that share one queue.

    python scripts/render_queue.py JOBS.tsv --workers cuda:4,cpu:10 [--seconds S]

JOBS.tsv: one job per line, ``output.mid<TAB>score<TAB>imf render flags...``, longest first. GPU workers walk
the list from the top, CPU workers from the bottom, and claim a job by creating ``output.mid.claim``
exclusively, so each job runs once; a job already rendered is skipped. Each job is ``imf render`` in the
worker's process (the default model and the libraries load once per worker). With --seconds, workers stop
claiming jobs after that long, and jobs still running --grace seconds later are stopped. Prints one line per job.
CUDA workers add --cuda-flags (default ``--compile``: without it, several workers sharing one GPU each decode
at ~175 tokens/s, no faster than a CPU core; compiled, one decodes ~2,000 tokens/s after a ~30 s compilation).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import multiprocessing as mp
import os
import time
from pathlib import Path


def _claim(output: Path) -> bool:
    if output.exists():
        return False
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(f"{output}.claim", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


def _worker(device: str, jobs: list[tuple[Path, str, list[str]]], deadline: float, cuda_flags: list[str]) -> None:
    import torch

    from instruct_museformer.cli.render import main as render

    if device == "cpu":  # the CPU is the slower device: it takes the short jobs from the end of the list
        torch.set_num_threads(1)
        jobs = jobs[::-1]
    for output, score, flags in jobs:
        if device.startswith("cuda"):
            flags = [*flags, *(f for f in cuda_flags if f not in flags)]
        if time.time() > deadline or not _claim(output):
            continue
        start = time.perf_counter()
        log = io.StringIO()
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            try:
                rc = render([score, "-o", str(output), "--report", str(output.with_suffix(".json")), "--device",
                             device, *flags])
            except SystemExit as error:
                rc = error.code
            except Exception as error:  # a crash is a result to report, not a reason to stop the queue
                rc = f"{type(error).__name__}: {error}"
        output.with_suffix(".log").write_text(log.getvalue())
        last = log.getvalue().strip().splitlines()[-1:] or [""]
        print(f"{output} {device} rc={rc} {time.perf_counter() - start:.1f}s {last[0]}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("jobs", type=Path)
    p.add_argument("--workers", default="cpu:2", help="DEVICE:COUNT,... e.g. cuda:4,cpu:10")
    p.add_argument("--seconds", type=float, default=None, help="stop claiming jobs after this long (default: never)")
    p.add_argument("--grace", type=float, default=60.0, help="then stop the jobs still running after this long")
    p.add_argument("--cuda-flags", default="--compile", help="imf render flags CUDA workers add ('': none)")
    args = p.parse_args()
    jobs = []
    for line in args.jobs.read_text().splitlines():
        if line.strip():
            output, score, *flags = line.split("\t")
            jobs.append((Path(output), score, [f for f in flags if f]))
    deadline = time.time() + (args.seconds if args.seconds is not None else float("inf"))
    ctx = mp.get_context("spawn")
    procs = []
    for spec in args.workers.split(","):
        device, _, count = spec.partition(":")
        for _ in range(int(count or 1)):
            procs.append(ctx.Process(target=_worker, args=(device, jobs, deadline, args.cuda_flags.split())))
    for proc in procs:
        proc.start()
    for proc in procs:  # a job still running a minute after the deadline is stopped (its output is not written)
        proc.join(None if args.seconds is None else max(0.0, deadline + args.grace - time.time()))
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
            proc.join()
    done = sum(1 for output, _, _ in jobs if output.exists())
    print(f"render queue: {done} of {len(jobs)} jobs rendered")


if __name__ == "__main__":
    main()

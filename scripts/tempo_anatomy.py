"""Where the beat-tempo agreement between performances comes from (issue #17, docs/model.md).

    python scripts/tempo_anatomy.py humans ROOT METADATA SPLIT
        per piece, each human against the mean of the others (imf evaluate's beat tempo r), and against that
        mean kept only in the last N bars (flat elsewhere): how much of the agreement the ending alone gives
    python scripts/tempo_anatomy.py endings ROOT METADATA SPLIT RENDERINGS
        per rendered piece, the tempo of its last two measured bars relative to its median bar tempo,
        rendered against the humans' mean (< 1: slower, a ritardando)
    python scripts/tempo_anatomy.py detrend IN_DIR OUT_DIR [WINDOW_QUARTERS]
        copies of rendered MIDI files with the slow drift of their tempo map removed (log tempo minus its
        running median over WINDOW_QUARTERS, plus the piece's median); the local shape stays

ROOT / METADATA / SPLIT as for `imf evaluate --corpus nasap`. Uses the evaluation's own feature extraction,
so the figures are the ones `imf evaluate` reports.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

LAST_BARS = (1, 2, 4)


def _pieces(root: Path, metadata: Path, split: str, renderings: Path | None = None):  # noqa: ANN202
    """(job, score, rendering features or None, humans' features) per piece with a human performance."""
    from instruct_museformer.evaluate.features import load_score
    from instruct_museformer.evaluate.runner import _performance
    from instruct_museformer.evaluate.sources import nasap_jobs

    jobs, _ = nasap_jobs(root, metadata, split, renderings)
    for job in jobs:
        rendered = job.rendering is not None and job.rendering.exists()
        if not job.humans or (renderings is not None and not rendered):
            continue
        score = load_score(job.score)
        rendering = _performance(score, job.rendering, None) if rendered else None
        yield job, score, rendering, [_performance(score, h.midi, h.alignment) for h in job.humans]


def humans(root: Path, metadata: Path, split: str) -> None:
    from instruct_museformer.evaluate.metrics import curve_r, mean_curve

    names = ["all bars", *(f"last {n} only" for n in LAST_BARS), "without the last 2"]
    totals: dict[str, list[float]] = {name: [] for name in names}
    for job, score, _, hs in _pieces(root, metadata, split):
        if len(hs) < 2:
            continue
        beat_at, bars = score.beat_starts, score.bar_starts
        piece: dict[str, list[float | None]] = {name: [] for name in names}
        for i, human in enumerate(hs):
            keys, values = mean_curve([o.tempo_beat for j, o in enumerate(hs) if j != i])
            piece["all bars"].append(curve_r((keys, values), human.tempo_beat))
            for n in LAST_BARS:
                start = bars[max(len(bars) - n, 0)]  # the last n notated bars
                flat = np.where(beat_at[keys] >= start, values, np.median(values)) if len(keys) else values
                piece[f"last {n} only"].append(curve_r((keys, flat), human.tempo_beat))
            h_keys, h_values = human.tempo_beat
            keep = beat_at[h_keys] < bars[max(len(bars) - 2, 0)]
            piece["without the last 2"].append(curve_r((keys, values), (h_keys[keep], h_values[keep])))
        means = {name: _mean(v) for name, v in piece.items()}
        for name, value in means.items():
            if value is not None:
                totals[name].append(value)
        print(f"{job.name:45s} " + "  ".join(f"{name} {_fmt(v)}" for name, v in means.items()), flush=True)
    print("mean over pieces: " + "  ".join(f"{name} {_fmt(_mean(v))} ({len(v)})" for name, v in totals.items()))


def endings(root: Path, metadata: Path, split: str, renderings: Path) -> None:
    for job, _, rendering, hs in _pieces(root, metadata, split, renderings):
        played = np.array([_ending(h.tempo_bar) for h in hs])
        ours = _ending(rendering.tempo_bar)
        print(f"{job.name:45s} rendered {ours[0]:.2f} / {ours[1]:.2f}   humans {np.nanmean(played[:, 0]):.2f} / "
              f"{np.nanmean(played[:, 1]):.2f}   (tempo of the last / second-to-last measured bar, x median)")


def detrend(source: Path, target: Path, window_quarters: float = 32.0) -> None:
    from symusic import Score, Tempo

    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.glob("*.mid")):
        midi = Score(str(path))
        step = midi.ticks_per_quarter / 4  # sixteenth-note samples of the held tempo
        times = np.array([t.time for t in midi.tempos], dtype=np.float64)
        log_qpm = np.log(np.array([t.qpm for t in midi.tempos], dtype=np.float64))
        grid = np.arange(0.0, max(float(midi.end()), times[-1]) + step, step)
        held = log_qpm[np.searchsorted(times, grid, side="right") - 1]
        half = int(window_quarters * 2)
        trend = np.array([np.median(held[max(0, i - half) : i + half + 1]) for i in range(len(grid))])
        at = np.clip((times / step).astype(np.int64), 0, len(grid) - 1)
        steady = log_qpm - (trend[at] - np.median(held))
        midi.tempos = [Tempo(int(t), float(np.exp(v))) for t, v in zip(times, steady, strict=True)]
        midi.dump_midi(str(target / path.name))
        print(f"{path.name}: drift removed", flush=True)


def _ending(curve: tuple[np.ndarray, np.ndarray]) -> tuple[float, float]:
    values = curve[1]
    if len(values) < 4:
        return (np.nan, np.nan)
    median = np.median(values)  # values are log seconds per quarter: a ratio of tempos is exp(median - value)
    return float(np.exp(median - values[-1])), float(np.exp(median - values[-2]))


def _mean(values: list) -> float | None:
    kept = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(kept)) if kept else None


def _fmt(value: float | None) -> str:
    return "  - " if value is None else f"{value:.2f}"


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in ("humans", "endings", "detrend"):
        sys.exit(__doc__)
    command, args = sys.argv[1], sys.argv[2:]
    if command == "humans":
        humans(Path(args[0]), Path(args[1]), args[2])
    elif command == "endings":
        endings(Path(args[0]), Path(args[1]), args[2], Path(args[3]))
    else:
        detrend(Path(args[0]), Path(args[1]), *(float(a) for a in args[2:3]))


if __name__ == "__main__":
    main()

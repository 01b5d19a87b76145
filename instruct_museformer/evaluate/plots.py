"""Optional plots: beat-level tempo and velocity curves of the rendering, the humans and the deadpan."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .features import Features, ScoreInfo


def _velocity_per_beat(score: ScoreInfo, features: Features) -> tuple[np.ndarray, np.ndarray]:
    """Mean velocity of the notes of each notated beat, at the beat's position in quarter notes."""
    keys, values = features.velocity
    if len(keys) == 0 or len(score.beat_starts) == 0:
        return np.zeros(0), np.zeros(0)
    onsets = score.note_array["onset_quarter"][keys].astype(np.float64)
    beats = np.clip(np.searchsorted(score.beat_starts, onsets + 1e-9, side="right") - 1, 0, None)
    unique, inverse = np.unique(beats, return_inverse=True)
    return score.beat_starts[unique], np.bincount(inverse, weights=values) / np.bincount(inverse)


def plot_piece(
    path: Path,
    title: str,
    score: ScoreInfo,
    rendering: Features | None,
    humans: Sequence[Features],
    deadpan: Features | None,
) -> None:
    """Write one PNG with two panels (beat-level tempo, mean velocity per beat); atomic write."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (tempo_ax, velocity_ax) = plt.subplots(2, 1, figsize=(12, 6), sharex=True)
    series: list[tuple[str, Features, dict]] = [
        ("humans" if i == 0 else "", h, {"color": "0.6", "linewidth": 0.8}) for i, h in enumerate(humans)
    ]
    if deadpan is not None:
        series.append(("deadpan", deadpan, {"color": "tab:blue", "linestyle": "--", "linewidth": 1.0}))
    if rendering is not None:
        series.append(("rendering", rendering, {"color": "tab:red", "linewidth": 1.4}))
    for label, features, style in series:
        keys, log_period = features.tempo_beat  # keys: notated-beat index; values: log seconds per quarter
        tempo_ax.plot(score.beat_starts[keys], 60.0 / np.exp(log_period), label=label or None, **style)
        beats, velocity = _velocity_per_beat(score, features)
        velocity_ax.plot(beats, velocity, **style)
    tempo_ax.set_yscale("log")  # tempo ratios matter, and one stray alignment spike must not flatten the rest
    tempo_ax.set_ylabel("tempo (quarters/min)")
    velocity_ax.set_ylabel("mean velocity")
    velocity_ax.set_xlabel("score position (quarter notes)")
    tempo_ax.set_title(title)
    if series:
        tempo_ax.legend(loc="upper right", fontsize="small")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}.png")
    try:
        figure.savefig(temporary, dpi=100)
        os.replace(temporary, path)
    finally:
        plt.close(figure)
        temporary.unlink(missing_ok=True)

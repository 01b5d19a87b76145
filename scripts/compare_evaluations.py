"""Paired table of several `imf evaluate` reports: means over the pieces that every report rendered.

    python scripts/compare_evaluations.py NAME=report.json [NAME=report.json ...]

Reports over different subsets of a split (renders cut short by a time limit, say) are compared on the
pieces they share, with the deadpan of those same pieces (from the first report). Figures: vs_each.
"""

from __future__ import annotations

import json
import sys

import numpy as np

KEYS = ("tempo_beat_r", "tempo_bar_r", "velocity_r", "velocity_mae", "articulation_r", "js_velocity", "js_ioi",
        "js_duration", "js_pedal")


def _load(path: str) -> dict[str, tuple[dict, dict, dict]]:
    report = json.loads(open(path, encoding="utf-8").read())
    out = {}
    for piece in report["pieces"]:
        systems = piece.get("systems") or {}
        if piece.get("rendering") and systems.get("rendering"):
            out[piece["name"]] = (systems["rendering"].get("vs_each") or {}, (systems.get("deadpan") or {}).get(
                "vs_each") or {}, systems["rendering"].get("coverage") or {})
    return out


def _mean(values: list) -> str:
    kept = [v for v in values if v is not None and np.isfinite(v)]
    return f"{np.mean(kept):.2f}" if kept else "-"


def main(args: list[str]) -> None:
    runs = {name: _load(path) for name, path in (a.split("=", 1) for a in args)}
    common = sorted(set.intersection(*(set(v) for v in runs.values())))
    print(f"{len(common)} pieces: {', '.join(common)}\n")
    print("| system | " + " | ".join(KEYS) + " | coverage | coverage, unisons once |")
    print("|---" * (len(KEYS) + 3) + "|")
    first = next(iter(runs.values()))
    print("| deadpan | " + " | ".join(_mean([first[n][1].get(k) for n in common]) for k in KEYS) + " | - | - |")
    for name, run in runs.items():
        cells = [_mean([run[n][0].get(k) for n in common]) for k in KEYS]
        coverage = [_mean([run[n][2].get(key) for n in common]) for key in ("coverage", "coverage_unisons_once")]
        print(f"| {name} | " + " | ".join(cells) + f" | {coverage[0]} | {coverage[1]} |")


if __name__ == "__main__":
    main(sys.argv[1:])

"""Is the global tempo right? The opening Tempo in the data, in the model, and in renders (issue #17).

    python scripts/opening_tempo.py data DATA-BIN [SUBSET]
        per performance, its opening Tempo token against the median of the next three: a tokenizer that
        stretches the first beat shows here as a first beat much slower than the ones after it
    python scripts/opening_tempo.py model DATA-BIN CHECKPOINT [SUBSET]
        teacher-forced, the model's expected opening Tempo (log qpm, given the score alone) against the
        pianist's first beat and first four beats, and what the score's metronome mark alone gives; how far
        that expectation follows the mark when the mark is moved (+-8 bins); and the same at a piece's
        second chunk (1,024 tokens, no performance before it, the markings in force carried when the
        checkpoint was trained with --carry-markings); and how far it moves given another piece's score
    python scripts/opening_tempo.py lengths ROOT METADATA SPLIT RENDERINGS
        per rendered piece, its length (first onset to last offset) against the median of its pianists':
        the global tempo, which the evaluation's correlations do not see

SUBSET defaults to valid; ROOT / METADATA / SPLIT as for `imf evaluate --corpus nasap`. "Marked": the score's
first Tempo token is a metronome mark, not the bin of the score tokenizer's stand-in for a score without one
(``DEFAULT_SCORE_TEMPO``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def _tempo_table(data_bin: Path) -> dict[int, float]:
    """Tempo token id -> log qpm, from the data-bin's tokenizer."""
    from instruct_museformer.tokens.tokenizer import Vocab, load_tokenizer, token_value

    tokens = Vocab(load_tokenizer(data_bin / "tokenizer.json")).tokens
    return {i: token_value(t) for i, t in enumerate(tokens) if t.startswith("Tempo_")}


def data(data_bin: Path, subset: str = "valid") -> None:
    from instruct_museformer.data.indexed import MMapIndexedDataset

    tempo = _tempo_table(data_bin)
    perf = MMapIndexedDataset(data_bin / f"{subset}.score-perf.perf")
    ratios = []
    for k in range(len(perf)):
        values = [tempo[int(i)] for i in perf[k][:2000] if int(i) in tempo][:4]
        if len(values) == 4:
            ratios.append((values[0] - np.median(values[1:])) / np.log(2))
    r = np.array(ratios)
    print(f"{subset}: {len(r)} performances; log2(opening Tempo / median of the next three): percentiles "
          f"5/10/25/50/75/90 {np.round(np.percentile(r, [5, 10, 25, 50, 75, 90]), 2).tolist()}; "
          f"more than 30% slower: {np.mean(r < np.log2(0.7)):.2f}")


def _expected_log_qpm(net, sample, layout, ids: np.ndarray, log_qpm: np.ndarray, tempo: dict[int, float],
                      shift: int = 0):
    """(expected log qpm of the first target Tempo given the score alone, the first four played) or None.

    ``shift``: the sample's Tempo tokens are relative to the mark, moved by this many bins (moved back here)."""
    import torch

    from instruct_museformer.data.dataset import collate

    batch = collate([sample], layout.beat_table)
    target = batch.target[0].tolist()
    at = [k for k, t in enumerate(target) if t in tempo]
    if len(at) < 4:
        return None
    logits = net(batch)[0]
    p = torch.softmax(logits[at[0], torch.as_tensor(ids)].float(), -1).numpy()
    back = log_qpm[np.clip(np.arange(len(ids)) - shift, 0, len(ids) - 1)]  # bin k -> the tempo it stands for
    rank = {int(t): k for k, t in enumerate(ids)}
    return float(p @ back), [float(back[rank[target[k]]]) for k in at[:4]]


def _moved_marks(sample, ids: np.ndarray, bins: int):
    """``sample`` with every Tempo token of its score side moved by ``bins`` (clamped)."""
    from dataclasses import replace

    import torch

    rank = {int(t): k for k, t in enumerate(ids)}
    source = [int(ids[min(len(ids) - 1, max(0, rank[t] + bins))]) if t in rank else t for t in sample.source.tolist()]
    return replace(sample, source=torch.tensor(source))


def model(data_bin: Path, checkpoint: Path, subset: str = "valid") -> None:
    from dataclasses import replace

    import torch

    from instruct_museformer.data.dataset import load_dataset
    from instruct_museformer.data.views import sample_views
    from instruct_museformer.data.vocabulary import TOKENIZER_FILE, token_layout
    from instruct_museformer.tokens.score import DEFAULT_SCORE_TEMPO
    from instruct_museformer.tokens.specials import BAR
    from instruct_museformer.tokens.tokenizer import load_tokenizer, nearest_tempo_bin, vocab_tokens
    from instruct_museformer.train.checkpoint import load_checkpoint_model, read_config

    net, cfg, _ = load_checkpoint_model(checkpoint, "reference")
    net.eval()
    tempo = _tempo_table(data_bin)
    ids = np.array(sorted(tempo))
    log_qpm = np.array([tempo[i] for i in ids])
    no_mark = log_qpm[nearest_tempo_bin(np.exp(log_qpm), DEFAULT_SCORE_TEMPO)]  # the bin the score tokenizer picks
    args = read_config(checkpoint).get("args", {})
    layout = token_layout(data_bin / TOKENIZER_FILE, sorted(data_bin.glob("dict.*.txt")), cfg.vocab_size,
                          beat_mask_ts=bool(args.get("beat_mask_ts", True)))
    # the chunks as the checkpoint was trained on them (markings carried, tempo relative to the mark)
    views = sample_views(args, vocab_tokens(load_tokenizer(data_bin / TOKENIZER_FILE)), cfg.vocab_size)
    carry, relative = views.carry, views.relative
    dataset = load_dataset(data_bin, subset, truncate=1024, chunk=True, carry=carry, relative=relative)

    def shift_of(i: int, sample) -> int:  # the bins the sample's Tempo tokens were moved by (its first bar's)
        if relative is None:
            return 0
        piece = dataset.source_data.tokens(int(dataset.piece_of[i]))
        bars_before = int(np.count_nonzero(piece[: int(dataset.source_start[i])] == BAR))
        return int(relative.bar_shifts(piece)[bars_before])
    chunks: dict[int, list[int]] = {}
    for i in range(len(dataset)):
        chunks.setdefault(int(dataset.piece_of[i]), []).append(i)
    rows, moved, later, swapped = [], [], [], []
    firsts = [dataset[c[0]] for c in chunks.values()]
    with torch.inference_mode():
        for piece_chunks in chunks.values():
            sample = dataset[piece_chunks[0]]
            shift = shift_of(piece_chunks[0], sample)
            found = _expected_log_qpm(net, sample, layout, ids, log_qpm, tempo, shift)
            if found is None:
                continue
            expected, played = found
            mark = next(tempo[t] for t in dataset.source_data.tokens(int(dataset.piece_of[piece_chunks[0]])).tolist()
                        if t in tempo)
            rows.append((expected, played[0], float(np.median(played)), mark))
            # another piece's score (half the list away: a piece's performances are adjacent), the same performance
            other = firsts[(len(rows) + len(firsts) // 2) % len(firsts)]
            found = None if relative or torch.equal(other.source, sample.source) else _expected_log_qpm(
                net, replace(sample, source=other.source), layout, ids, log_qpm, tempo)
            if found is not None:
                swapped.append(abs(found[0] - expected) / np.log(2))
            if not np.isclose(mark, no_mark):  # how far the expectation follows a moved mark (8 bins: x1.34)
                # a relative model reads the moved mark as the reference bin still, and its output moves with it
                up = _expected_log_qpm(net, sample if relative else _moved_marks(sample, ids, 8), layout, ids,
                                       log_qpm, tempo, shift - 8 if relative else 0)
                down = _expected_log_qpm(net, sample if relative else _moved_marks(sample, ids, -8), layout, ids,
                                         log_qpm, tempo, shift + 8 if relative else 0)
                k = int(np.abs(log_qpm - mark).argmin())
                moved.append((up[0] - down[0], log_qpm[min(len(ids) - 1, k + 8)] - log_qpm[max(0, k - 8)]))
            if len(piece_chunks) > 1:  # a chunk from the middle: no performance before it
                second = dataset[piece_chunks[1]]
                found = _expected_log_qpm(net, second, layout, ids, log_qpm, tempo, shift_of(piece_chunks[1], second))
                if found is not None:
                    in_force = [tempo[t] for t in dataset.source_data.tokens(int(dataset.piece_of[piece_chunks[1]]))
                                [: int(dataset.source_start[piece_chunks[1]])].tolist() if t in tempo]
                    later.append((found[0], float(np.median(found[1])), in_force[-1], mark))
    r = np.array(rows) / np.log(2)  # log2 qpm
    marked = ~np.isclose(r[:, 3], no_mark / np.log(2))
    print(f"{checkpoint}: {len(r)} performances, {int(marked.sum())} with a mark"
          f"{' (chunks carry the markings in force)' if carry else ''}")
    for name, j in (("the first beat", 1), ("the first four beats (median)", 2)):
        error = np.abs(r[:, 0] - r[:, j])
        print(f"  expected opening Tempo against {name}: mean |log2| {error.mean():.3f} "
              f"(marked {error[marked].mean():.3f}), r {np.corrcoef(r[:, 0], r[:, j])[0, 1]:.2f}")
    print(f"  the mark alone against the first four beats (marked): mean |log2| "
          f"{np.abs(r[marked, 3] - r[marked, 2]).mean():.3f}")
    if moved:
        m = np.array(moved)
        print(f"  the mark moved by +-8 bins ({len(m)} marked): the expected opening Tempo moves by "
              f"{np.mean(m[:, 0] / m[:, 1]):.2f} of it (1: follows the mark, 0: ignores it)")
    if swapped:
        print(f"  given another piece's score ({len(swapped)}): the expected opening Tempo moves by mean |log2| "
              f"{np.mean(swapped):.3f}")
    if later:
        v = np.array(later) / np.log(2)
        error = np.abs(v[:, 0] - v[:, 1])
        in_mark = ~np.isclose(v[:, 3], no_mark / np.log(2))
        print(f"  a piece's second chunk ({len(v)}, of 1,024 tokens, no performance before it): expected first Tempo "
              f"against its first four beats: mean |log2| {error.mean():.3f} (marked pieces "
              f"{error[in_mark].mean():.3f}); the mark in force alone (marked pieces): "
              f"{np.abs(v[in_mark, 2] - v[in_mark, 1]).mean():.3f}")


def lengths(root: Path, metadata: Path, split: str, renderings: Path) -> None:
    from instruct_museformer.evaluate.sources import nasap_jobs
    from instruct_museformer.tokens.score import read_midi

    def span(path: Path) -> float:
        notes = [n for t in read_midi(path, "second").tracks for n in t.notes]
        return max(n.time + n.duration for n in notes) - min(n.time for n in notes)

    jobs, _ = nasap_jobs(root, metadata, split, renderings)
    ratios = []
    for job in jobs:
        if not job.humans or job.rendering is None or not job.rendering.exists():
            continue
        ratio = span(job.rendering) / float(np.median([span(h.midi) for h in job.humans]))
        ratios.append(ratio)
        print(f"{ratio:5.2f}  {job.name}")
    r = np.log2(np.array(ratios))
    print(f"{len(r)} pieces: mean |log2(rendered / played length)| {np.abs(r).mean():.3f}; "
          f"off by more than 25%: {np.mean((r < np.log2(0.8)) | (r > np.log2(1.25))):.2f}")


def main() -> None:
    command, args = (sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 else ("", [])
    if command == "data":
        data(Path(args[0]), *args[1:])
    elif command == "model":
        model(Path(args[0]), Path(args[1]), *args[2:])
    elif command == "lengths":
        lengths(Path(args[0]), Path(args[1]), args[2], Path(args[3]))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()

"""Teacher-forced diagnosis: does the model know the expression, or does decoding throw it away?

Each performance of a split is fed to the model with its true history (teacher forcing, in bar-aligned
chunks as rendering windows see them). Per target token we keep its class and NLL, and for the ordinal
classes -- Tempo (log qpm), Velocity, Position (timing), Duration (beats) -- the model's *expected value*:
the probability-weighted mean over that class's bins, the distribution renormalised within the class.
Per piece, the Pearson r between the truth and that expected value says how much of the expression the
model knows; a free-running render of the same pieces, scored by ``imf evaluate``, says how much of it
survives decoding.

The onset offset of a note is its performance position minus the nearest score position that holds a note
in the same bar (performance bar k plays score bar k); the expected offset uses the expected position.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data.batch import Batch
from ..tokens import specials
from ..tokens.tokenizer import Vocab, token_value

TOKEN_CLASSES = ("Tempo", "Position", "Velocity", "Duration", "Pedal", "Pitch", "Bar/TimeSig", "Other")
ORDINAL_CLASSES = ("Tempo", "Position", "Velocity", "Duration")


def _class_of(token: str) -> str:
    kind = token.partition("_")[0]
    if kind in ("Tempo", "Position", "Velocity", "Duration", "Pitch"):
        return kind
    if kind in ("Pedal", "PedalOff"):
        return "Pedal"
    if kind in ("Bar", "TimeSig", "EOS"):
        return "Bar/TimeSig"
    return "Other"


@dataclass(frozen=True)
class ClassTable:
    """Per vocabulary id: its class index (into TOKEN_CLASSES) and its ordinal value (NaN if none)."""

    class_index: np.ndarray  # (V,) int64
    value: np.ndarray  # (V,) float64

    @classmethod
    def of(cls, vocab: Vocab) -> ClassTable:
        tokens = vocab.tokens
        index = np.array([TOKEN_CLASSES.index(_class_of(t)) for t in tokens], dtype=np.int64)
        index[: specials.NUM_SPECIALS] = TOKEN_CLASSES.index("Other")
        index[specials.EOS] = TOKEN_CLASSES.index("Bar/TimeSig")
        value = np.array([token_value(t) for t in tokens], dtype=np.float64)
        return cls(index, value)

    def members(self, name: str) -> np.ndarray:
        return np.flatnonzero(self.class_index == TOKEN_CLASSES.index(name))


@dataclass
class PairDiagnosis:
    """One performance: NLL sums per class and (truth, expected, argmax) triples per ordinal quantity."""

    piece: int
    nll: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    count: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    series: dict[str, list[tuple[float, float, float]]] = field(default_factory=lambda: defaultdict(list))


def _score_positions(source: Sequence[int], vocab: Vocab) -> list[np.ndarray]:
    """Per bar of a score chunk, the positions that hold a note."""
    tokens = vocab.tokens
    bars: list[list[int]] = [[]]
    position = 0
    for token_id in source:
        if token_id == specials.BAR:
            bars.append([])
            continue
        if token_id < specials.NUM_SPECIALS or token_id >= len(tokens):
            continue
        kind, _, value = tokens[token_id].partition("_")
        if kind == "Position":
            position = int(value)
        elif kind == "Pitch":
            bars[-1].append(position)
    return [np.unique(np.array(b, dtype=np.float64)) for b in bars]


def diagnose_chunk(
    logits: torch.Tensor, target: Sequence[int], source: Sequence[int], table: ClassTable, vocab: Vocab,
    into: PairDiagnosis,
) -> None:
    """Add one teacher-forced chunk: ``logits`` (T, V) for the ``target`` tokens (T,)."""
    logp = torch.log_softmax(logits.float(), dim=-1).cpu().numpy().astype(np.float64)
    target = np.asarray(target, dtype=np.int64)
    nll = -logp[np.arange(len(target)), target]
    classes = table.class_index[target]
    for c, name in enumerate(TOKEN_CLASSES):
        sel = classes == c
        into.nll[name] += float(nll[sel].sum())
        into.count[name] += int(sel.sum())
    expected: dict[str, np.ndarray] = {}
    argmax: dict[str, np.ndarray] = {}
    for name in ORDINAL_CLASSES:
        ids = table.members(name)
        sel = np.flatnonzero(table.class_index[target] == TOKEN_CLASSES.index(name))
        if not len(sel):
            continue
        p = np.exp(logp[np.ix_(sel, ids)])
        p /= p.sum(axis=1, keepdims=True)
        expected[name] = p @ table.value[ids]
        argmax[name] = table.value[ids][p.argmax(axis=1)]
        truth = table.value[target[sel]]
        if name != "Position":
            into.series[name] += list(zip(truth, expected[name], argmax[name], strict=True))
    _onset_offsets(target, source, table, vocab, expected.get("Position"), argmax.get("Position"), into)


def _onset_offsets(
    target: np.ndarray, source: Sequence[int], table: ClassTable, vocab: Vocab, expected: np.ndarray | None,
    argmax: np.ndarray | None, into: PairDiagnosis,
) -> None:
    """(truth, expected, argmax) offsets from the nearest score note position, for Positions that start notes."""
    if expected is None:
        return
    score = _score_positions(source, vocab)
    pitch = TOKEN_CLASSES.index("Pitch")
    position = TOKEN_CLASSES.index("Position")
    bar, k = 0, 0
    for i, token_id in enumerate(target):
        if token_id == specials.BAR:
            bar += 1
            continue
        if table.class_index[token_id] != position:
            continue
        j, k = k, k + 1  # index among Position targets
        starts_note = False
        for later in target[i + 1 :]:
            later_class = table.class_index[later]
            if later == specials.BAR or later_class == position:
                break
            if later_class == pitch:
                starts_note = True
                break
        if not starts_note or bar >= len(score) or not len(score[bar]):
            continue
        truth = table.value[token_id]
        nearest = score[bar][np.abs(score[bar] - truth).argmin()]
        into.series["Onset offset"].append((truth - nearest, expected[j] - nearest, argmax[j] - nearest))


def pearson(a: Sequence[float], b: Sequence[float]) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 3 or a.std() < 1e-12 or b.std() < 1e-12:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def teacher_forced(
    model: torch.nn.Module, batches: Iterable[tuple[Batch, list[int], list[list[int]]]], table: ClassTable,
    vocab: Vocab,
) -> dict[int, PairDiagnosis]:
    """Run ``model`` over (batch, pair index per row, source tokens per row); one PairDiagnosis per pair."""
    out: dict[int, PairDiagnosis] = {}
    with torch.inference_mode():
        for batch, pairs, sources in batches:
            logits = model(batch)
            for row, pair in enumerate(pairs):
                n = int((batch.target[row] != specials.PAD).sum())
                diag = out.setdefault(pair, PairDiagnosis(pair))
                diagnose_chunk(logits[row, :n], batch.target[row, :n].tolist(), sources[row], table, vocab, diag)
    return out


QUANTITIES = ("Tempo", "Velocity", "Onset offset", "Duration")


def summarize(pairs: dict[int, PairDiagnosis], piece_of_pair: dict[int, str]) -> dict:
    """Loss per class (bits/token) over all pairs; per quantity, mean over pieces of the per-pair Pearson r
    (truth vs expected value, and truth vs the most likely bin), pairs averaged within a piece first."""
    nll: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    for d in pairs.values():
        for name in TOKEN_CLASSES:
            nll[name] += d.nll[name]
            count[name] += d.count[name]
    total_nll, total_count = sum(nll.values()), sum(count.values())
    loss = {name: nll[name] / count[name] / math.log(2) for name in TOKEN_CLASSES if count[name]}
    loss["all"] = total_nll / max(total_count, 1) / math.log(2)
    share = {name: count[name] / max(total_count, 1) for name in TOKEN_CLASSES if count[name]}
    correlations: dict[str, dict[str, float]] = {}
    for quantity in QUANTITIES:
        by_piece: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for pair, d in pairs.items():
            rows = d.series.get(quantity)
            if not rows:
                continue
            truth, expected, best = (np.array(x) for x in zip(*rows, strict=True))
            # persistence: the previous true value of the quantity, what a model gets for free from its history
            by_piece[piece_of_pair[pair]].append(
                (pearson(truth, expected), pearson(truth, best), pearson(truth[1:], truth[:-1])))
        means = [np.nanmean(np.array(v), axis=0) for v in by_piece.values() if np.isfinite(np.array(v)).any()]
        if means:
            stacked = np.array(means)
            correlations[quantity] = {"r_expected": float(np.nanmean(stacked[:, 0])),
                                      "r_argmax": float(np.nanmean(stacked[:, 1])),
                                      "r_previous": float(np.nanmean(stacked[:, 2])), "pieces": len(means)}
    return {"loss_bits": loss, "token_share": share, "correlation": correlations}


def run_diagnosis(
    data_bin: Path, checkpoint: Path, subset: str = "valid", *, chunk_tokens: int = 4096, max_tokens: int = 16384,
    device: str = "cpu", attention_impl: str | None = None, progress: bool = True,
    pairs_per_piece: int | None = None, history_noise: float = 0.0, history_noise_bins: int = 2,
    self_feed: float = 0.0,
) -> dict:
    """Teacher-forced diagnosis of ``checkpoint`` on ``subset`` of ``data_bin`` (see the module docstring).

    Pieces are told apart by their score tokens (the performances of one score share them);
    ``pairs_per_piece`` keeps only the first N performances of each piece (a quicker run on a CPU).
    ``history_noise`` moves that share of the history's Tempo/Velocity/Duration tokens by up to
    ``history_noise_bins`` bins (``data.history_noise``; seed 1): how much the model loses when its history is
    off, as in a render, where it reads its own samples. ``self_feed`` replaces that share of the history's
    Tempo/Velocity tokens by the model's own expected bins from a first pass (``train.self_feed``; seed 1): how
    much it loses reading the history that `imf render --ordinal mean` writes.
    """
    import hashlib
    import sys
    import time

    from ..data.dataset import batch_indices, collate, load_dataset
    from ..data.history_noise import HistoryNoise
    from ..data.views import sample_views
    from ..data.vocabulary import TOKENIZER_FILE, token_layout
    from ..tokens.tokenizer import load_tokenizer
    from ..train.checkpoint import load_checkpoint_model, read_config
    from ..train.self_feed import SelfFeed

    model, cfg, metadata = load_checkpoint_model(checkpoint, attention_impl)
    model.to(device)
    vocab = Vocab(load_tokenizer(Path(metadata["path"])))
    table = ClassTable.of(vocab)
    data_bin = Path(data_bin)
    layout = token_layout(data_bin / TOKENIZER_FILE, sorted(data_bin.glob("dict.*.txt")), cfg.vocab_size,
                          beat_mask_ts=bool(read_config(checkpoint).get("args", {}).get("beat_mask_ts", True)))
    beat_table = layout.beat_table
    # the samples as the checkpoint was trained on them (markings carried into chunks, tempo relative to the mark)
    views = sample_views(metadata.get("args") or {}, vocab.tokens, cfg.vocab_size)
    dataset = load_dataset(Path(data_bin), subset, truncate=chunk_tokens, chunk=True, carry=views.carry,
                           relative=views.relative)
    piece_of_pair = {}
    for pair in range(len(dataset.source_data)):
        digest = hashlib.sha1(dataset.source_data.tokens(pair).tobytes()).hexdigest()
        piece_of_pair[pair] = digest
    if pairs_per_piece is not None:
        kept: dict[str, list[int]] = defaultdict(list)
        for pair, piece in piece_of_pair.items():
            if len(kept[piece]) < pairs_per_piece:
                kept[piece].append(pair)
        piece_of_pair = {pair: piece for piece, pairs in kept.items() for pair in pairs}
    samples = np.flatnonzero(np.isin(dataset.piece_of, list(piece_of_pair)))
    batches = [[int(samples[i]) for i in batch] for batch in batch_indices(
        dataset.sizes[samples], batch_size=None, max_tokens=max_tokens, seed=1, epoch=1, shuffle=False)]
    noise = HistoryNoise.build(vocab.tokens, cfg.vocab_size, probability=history_noise, bins=history_noise_bins)
    feed = SelfFeed.build(vocab.tokens, cfg.vocab_size, probability=self_feed)
    if feed is not None:
        feed = feed.to(torch.device(device))
        torch.manual_seed(1)
    start, done = time.perf_counter(), 0

    def stream():
        nonlocal done
        for indices in batches:
            samples = [dataset[i] for i in indices]
            batch = collate(samples, beat_table)
            batch = (batch if noise is None else noise(batch, done)).to(device)
            if feed is not None:  # the model is in eval mode, and teacher_forced reads this under inference_mode
                batch = feed.feed(batch, model(batch))
            yield batch, [int(dataset.piece_of[i]) for i in indices], [s.source.tolist() for s in samples]
            done += 1
            if progress:
                print(f"\rdiagnose: {done}/{len(batches)} batches, {time.perf_counter() - start:.0f} s",
                      end="", file=sys.stderr, flush=True)

    pairs = teacher_forced(model, stream(), table, vocab)
    if progress:
        print(file=sys.stderr)
    out = summarize(pairs, piece_of_pair)
    out.update({"checkpoint": str(metadata["path"]), "subset": subset, "pairs": len(pairs),
                "pieces": len(set(piece_of_pair.values())), "chunk_tokens": chunk_tokens,
                "history_noise": history_noise, "history_noise_bins": history_noise_bins, "self_feed": self_feed})
    return out


def format_table(result: dict) -> str:
    """A Markdown row set: loss per class, then the correlations."""
    loss, share = result["loss_bits"], result["token_share"]
    names = [n for n in TOKEN_CLASSES if n in loss]
    lines = ["| class | share of targets | loss (bits/token) |", "|---|---|---|"]
    lines += [f"| {n} | {share[n]:.3f} | {loss[n]:.3f} |" for n in names]
    lines.append(f"| all | 1.000 | {loss['all']:.3f} |")
    lines += ["", "| quantity | r (expected value) | r (most likely bin) | r (previous true value) | pieces |",
              "|---|---|---|---|---|"]
    for quantity, row in result["correlation"].items():
        lines.append(f"| {quantity} | {row['r_expected']:.3f} | {row['r_argmax']:.3f} | {row['r_previous']:.3f} "
                     f"| {row['pieces']} |")
    return "\n".join(lines)

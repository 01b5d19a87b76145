"""Training data: bar-paired truncation (property test), batching limits and determinism, collate."""

import random
import time

import numpy as np
import pytest
import torch

from instruct_museformer.data.batch import BEAT_INHERIT, BEAT_ZERO
from instruct_museformer.data.dataset import batch_indices, collate, load_dataset
from instruct_museformer.data.indexed import write_dataset
from instruct_museformer.errors import UserError

BAR, EOS = 4, 2


def _bars(rng: random.Random, lengths: list[int]) -> list[int]:
    """A sequence whose bars have the given lengths (content tokens 5..49, each bar closed by Bar)."""
    return [t for n in lengths for t in [rng.randrange(5, 50) for _ in range(n - 1)] + [BAR]]


def _write_pairs(data_bin, split, pairs, langs=("score", "perf")):
    data_bin.mkdir(parents=True, exist_ok=True)
    for k, lang in enumerate(langs):
        write_dataset(data_bin / f"{split}.{langs[0]}-{langs[1]}.{lang}", [p[k] + [EOS] for p in pairs], 64)


def _bar_spans(seq: list[int]) -> list[int]:
    """Number of bars a sequence touches: complete ones plus a trailing incomplete one."""
    body = [t for t in seq if t != EOS]
    closed = body.count(BAR)
    return closed + (1 if body and body[-1] != BAR else 0)


def test_truncation_keeps_bars_paired_over_random_layouts(tmp_path):
    rng = random.Random(1234)
    pairs = []
    for _ in range(300):
        n = rng.randint(1, 8)
        score, perf = (_bars(rng, [rng.randint(1, 12) for _ in range(n)]) for _ in range(2))
        pairs.append((score, perf))
    _write_pairs(tmp_path, "train", pairs)
    cases = {"whole": 0, "bars": 0, "partial": 0}
    for limit in (1, 2, 5, 9, 17, 40, 1000):
        ds = load_dataset(tmp_path, "train", truncate=limit)
        partial = 0
        for i, (score, perf) in enumerate(pairs):
            sample = ds[i]
            src, tgt = sample.source.tolist(), sample.target.tolist()
            whole = len(score) + 1 <= limit and len(perf) + 1 <= limit
            assert len(src) <= limit and len(tgt) <= limit
            assert src == (score + [EOS])[: len(src)] and tgt == (perf + [EOS])[: len(tgt)]  # prefixes
            assert (tgt[-1] == EOS) == whole  # target EOS only for a whole piece
            assert (src[-1] == EOS) == (len(score) + 1 <= limit and src[:-1] == score)
            assert ds.sizes[i] == max(len(src), len(tgt))
            src = src[:-1] if src[-1] == EOS else src  # the score's EOS was checked above
            s_ends = [j + 1 for j, t in enumerate(score) if t == BAR]
            p_ends = [j + 1 for j, t in enumerate(perf) if t == BAR]
            fits = [k for k in range(1, len(s_ends) + 1) if max(s_ends[k - 1], p_ends[k - 1]) <= limit]
            if whole:
                cases["whole"] += 1
                continue
            if fits:  # K complete bars on both sides, K maximal
                cases["bars"] += 1
                k = max(fits)
                assert src == score[: s_ends[k - 1]] and tgt == perf[: p_ends[k - 1]]
                assert src.count(BAR) == tgt.count(BAR) == k
            else:  # the first bar alone is too long: its first L tokens, on both sides
                partial += 1
                cases["partial"] += 1
                assert _bar_spans(src) == _bar_spans(tgt) == 1
                assert tgt == perf[: min(limit, p_ends[0])] and src == score[: min(limit, s_ends[0])]
        assert ds.stats.partial_first_bar == partial
        assert ds.stats.truncated == sum(1 for s, p in pairs if len(s) + 1 > limit or len(p) + 1 > limit)
    assert min(cases.values()) > 100, cases
    assert load_dataset(tmp_path, "train", truncate=1000).stats.truncated == 0


def test_language_model_keeps_first_tokens(tmp_path):
    rng = random.Random(3)
    songs = [_bars(rng, [3, 4, 5]), _bars(rng, [9])]
    write_dataset(tmp_path / "train", [s + [EOS] for s in songs], 64)
    ds = load_dataset(tmp_path, "train", task="lm", truncate=8)
    assert ds[0].source is None
    assert ds[0].target.tolist() == songs[0][:8] and ds[1].target.tolist() == songs[1][:8]
    assert ds.stats.partial_first_bar == 1 and ds.sizes.tolist() == [8, 8]
    assert load_dataset(tmp_path, "train", task="language_modeling").sizes.tolist() == [13, 10]


def test_loading_errors_and_fairseq_fallback_name(tmp_path):
    rng = random.Random(5)
    _write_pairs(tmp_path, "valid", [(_bars(rng, [2, 3]), _bars(rng, [4, 1]))], langs=("perf", "score"))
    # fairseq falls back to {split}.{tgt}-{src}.{lang}
    assert load_dataset(tmp_path, "valid")[0].source.tolist()[-1] == EOS
    with pytest.raises(UserError, match="fairseq names the validation split 'valid'"):
        load_dataset(tmp_path, "val")
    _write_pairs(tmp_path, "train", [(_bars(rng, [2, 3]), _bars(rng, [4]))])
    with pytest.raises(UserError, match="sample 0 has 2 score bars but 1 performance bars"):
        load_dataset(tmp_path, "train")
    with pytest.raises(UserError, match="task"):
        load_dataset(tmp_path, "train", task="mt")


def test_batch_indices_respect_limits_and_are_deterministic():
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 500, size=1000)
    t0 = time.perf_counter()
    batches = batch_indices(sizes, batch_size=16, max_tokens=2000, seed=1, epoch=3)
    assert time.perf_counter() - t0 < 1.0
    assert sorted(i for b in batches for i in b) == list(range(1000))
    for b in batches:
        assert len(b) <= 16 and max(sizes[b]) * len(b) <= 2000
    assert batches == batch_indices(sizes, batch_size=16, max_tokens=2000, seed=1, epoch=3)
    assert batches != batch_indices(sizes, batch_size=16, max_tokens=2000, seed=1, epoch=4)
    assert batches != batch_indices(sizes, batch_size=16, max_tokens=2000, seed=2, epoch=3)
    ordered = batch_indices(sizes, batch_size=None, max_tokens=2000, seed=0, epoch=0, shuffle=False)
    assert [max(sizes[b]) for b in ordered] == sorted(max(sizes[b]) for b in ordered)
    assert all(len(b) == 16 for b in batch_indices(np.full(64, 5), batch_size=16, max_tokens=None, seed=0, epoch=0))
    with pytest.raises(UserError, match="more than --max-tokens"):
        batch_indices(sizes, batch_size=None, max_tokens=100, seed=0, epoch=0)
    with pytest.raises(UserError, match="--batch-size or --max-tokens"):
        batch_indices(sizes, batch_size=None, max_tokens=None, seed=0, epoch=0)


def _table(vocab: int = 64) -> torch.Tensor:
    table = torch.full((vocab,), BEAT_INHERIT)
    table[:5] = BEAT_ZERO
    table[10] = 1
    table[11] = 9
    return table


def test_collate_shapes_and_decoder_input_shift(tmp_path):
    score = [[10, 20, 4, 11, 21, 4], [10, 4]]
    perf = [[10, 30, 31, 4, 11, 4], [11, 33, 4]]
    _write_pairs(tmp_path, "train", list(zip(score, perf, strict=True)))
    ds = load_dataset(tmp_path, "train")
    batch = collate([ds[0], ds[1]], _table())
    assert batch.target.tolist() == [perf[0] + [EOS], perf[1] + [EOS] + [0, 0, 0]]
    assert batch.prev_output.tokens.tolist() == [[EOS] + perf[0], [EOS] + perf[1] + [0, 0, 0]]
    assert batch.prev_output.bar_ids.tolist()[0] == [0, 1, 1, 1, 1, 2, 2]
    assert batch.prev_output.beat_ids.tolist()[0] == [0, 1, 1, 1, 0, 9, 0]
    assert batch.prev_output.num_complete_bars.tolist() == [2, 1]
    assert batch.source.tokens.tolist() == [score[0] + [EOS], score[1] + [EOS] + [0] * 4]
    assert batch.source.num_complete_bars.tolist() == [2, 1] and batch.source.lengths.tolist() == [7, 3]
    assert batch.ntokens == 11 and batch.ids.tolist() == [0, 1]
    assert batch.target.shape == batch.prev_output.tokens.shape == batch.prev_output.padding_mask.shape
    # truncated to the first bar: no EOS; the decoder input's last bar is then still open
    cut = collate([load_dataset(tmp_path, "train", truncate=5)[0]], _table())
    assert cut.target.tolist() == [[10, 30, 31, 4]] and cut.prev_output.tokens.tolist() == [[EOS, 10, 30, 31]]
    assert cut.source.tokens.tolist() == [[10, 20, 4]] and cut.prev_output.num_complete_bars.tolist() == [0]


def test_barless_pieces_truncate_without_empty_targets(tmp_path):
    _write_pairs(tmp_path, "train", [([7, 8, 9, 10, 11], []), ([7, 8], [9, 10, 11, 12])])
    ds = load_dataset(tmp_path, "train", truncate=3)
    assert ds[0].source.tolist() == [7, 8, 9] and ds[0].target.tolist() == [EOS]
    assert ds[1].source.tolist() == [7, 8, EOS] and ds[1].target.tolist() == [9, 10, 11]
    assert ds.stats.partial_first_bar == 2
    batch = collate([ds[0], ds[1]], _table())
    assert batch.prev_output.tokens.tolist() == [[EOS, 0, 0], [EOS, 9, 10]]


def test_chunking_covers_whole_pieces_in_paired_bar_windows(tmp_path):
    rng = random.Random(99)
    pairs = []
    for _ in range(120):
        n = rng.randint(1, 12)
        lengths = [[rng.randint(1, 12) for _ in range(n)] for _ in range(2)]
        pairs.append(tuple(_bars(rng, ls) for ls in lengths))
    _write_pairs(tmp_path, "train", pairs)
    for limit in (3, 10, 25, 1000):
        ds = load_dataset(tmp_path, "train", truncate=limit, chunk=True)
        chunks: dict[int, list] = {}
        for i in range(len(ds)):
            sample = ds[i]
            assert sample.id == i
            src, tgt = sample.source.tolist(), sample.target.tolist()
            assert 1 <= len(tgt) <= limit and len(src) <= limit
            assert ds.sizes[i] == max(len(src), len(tgt))
            chunks.setdefault(int(ds.piece_of[i]), []).append((src, tgt))
        assert sorted(chunks) == list(range(len(pairs)))
        for piece, (score, perf) in enumerate(pairs):
            parts = chunks[piece]
            s_bars = [b for b in _split_bars(score)]
            p_bars = [b for b in _split_bars(perf)]
            too_long = any(max(len(a), len(b)) > limit for a, b in zip(s_bars, p_bars, strict=True))
            if not too_long:  # every bar whole: the chunks concatenate to the piece, bars paired per chunk
                assert sum((s for s, _ in parts), []) == (score + [EOS])[: sum(len(s) for s, _ in parts)]
                assert sum((t for _, t in parts), []) == (perf + [EOS])[: sum(len(t) for _, t in parts)]
                assert sum(s.count(BAR) for s, _ in parts) == len(s_bars)
                for s, t in parts:
                    assert s.count(BAR) == t.count(BAR) >= 1
                    assert t[-1] in (BAR, EOS)
            # only the last chunk may hold the EOS, and it does when the whole tail fits
            assert all(EOS not in t for _, t in parts[:-1])
        if limit == 1000:
            assert len(ds) == len(pairs) and all(ds[i].target.tolist()[-1] == EOS for i in range(len(ds)))
    with pytest.raises(UserError, match="chunk"):
        load_dataset(tmp_path, "train", chunk=True)


def _split_bars(seq: list[int]) -> list[list[int]]:
    bars, current = [], []
    for t in seq:
        current.append(t)
        if t == BAR:
            bars.append(current)
            current = []
    return bars

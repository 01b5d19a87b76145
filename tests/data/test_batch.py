import torch

from instruct_museformer.data.batch import BEAT_INHERIT, BEAT_ZERO, collate_bar_tokens


def _table(vocab: int = 20) -> torch.Tensor:
    table = torch.full((vocab,), BEAT_INHERIT)
    table[:5] = BEAT_ZERO  # specials and Bar
    table[10] = 1  # Position_0
    table[11] = 5  # Position_4
    table[12] = BEAT_ZERO  # a change token (tempo / time signature)
    return table


def test_bar_and_beat_ids_follow_museformer():
    #              BOS Pos0 n  n  Pos4 n  Bar chg Pos0 n Bar n
    seq = torch.tensor([2, 10, 7, 8, 11, 7, 4, 12, 10, 7, 4, 7])
    batch = collate_bar_tokens([seq, seq[:5]], _table())
    assert batch.bar_ids[0].tolist() == [0, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 3]
    assert batch.beat_ids[0].tolist() == [0, 1, 1, 1, 5, 5, 0, 0, 1, 1, 0, 1]
    assert batch.num_complete_bars.tolist() == [2, 0]
    assert batch.lengths.tolist() == [12, 5]
    # padding: pad id, bar 0, beat 0, masked
    assert batch.tokens[1, 5:].eq(0).all() and batch.bar_ids[1, 5:].eq(0).all()
    assert batch.padding_mask[1, 5:].all() and not batch.padding_mask[1, :5].any()


def test_trailing_eos_of_a_source_is_bar_zero():
    seq = torch.tensor([10, 7, 4, 10, 8, 4, 2])
    batch = collate_bar_tokens([seq], _table())
    assert batch.bar_ids[0].tolist() == [1, 1, 1, 2, 2, 2, 0]
    assert batch.num_complete_bars.tolist() == [2]

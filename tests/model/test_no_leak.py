"""Causality: no output depends on a later target token (the original leaked through the BOS, 4.7);
padding is masked on both sides, so a sample's logits do not depend on what it is batched with."""

import warnings

import pytest
import torch
from model_helpers import bar_sequence, make_batch, random_layout_batch, small_config

from instruct_museformer.model import build_model
from instruct_museformer.tokens.specials import BAR


def _model(task: str, impl: str = "reference", **overrides: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(small_config(task, attention_impl=impl, **overrides)).eval()


def _logits(model: torch.nn.Module, batch) -> torch.Tensor:  # type: ignore[no-untyped-def]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model(batch)


@pytest.mark.parametrize("task", ["language_modeling", "translation"])
@pytest.mark.parametrize("impl", ["reference", "flex", "gather"])
def test_future_target_tokens_change_no_earlier_output(task: str, impl: str):
    model = _model(task, impl, con2con="((((-2, 0), -4),),)", con2sum="((((None, -4), -3),),)")
    gen = torch.Generator().manual_seed(7)
    target = bar_sequence(gen, [4, 1, 6, 3, 5, 2, 7, 4])
    source = bar_sequence(gen, [5, 2, 4, 3, 6, 1, 5, 3])
    base = _logits(model, make_batch([target], [source]))
    cuts = [1, 2, 3, 5, 8, 12, 20, len(target)] if impl == "reference" else [1, 5, 12]
    for cut in cuts:  # prev_output position `cut` onwards (target[cut-1:]) is replaced
        tail = torch.randint(5, 40, (9,), generator=gen)
        tail[torch.randint(0, 9, (3,), generator=gen)] = BAR  # new bars too: summaries appear and shift
        changed = torch.cat([target[: cut - 1], tail])
        out = _logits(model, make_batch([changed], [source]))
        torch.testing.assert_close(out[0, :cut], base[0, :cut], rtol=1e-5, atol=1e-5)
        assert not torch.allclose(out[0, cut:], base[0, cut : cut + out.shape[1] - cut], atol=1e-3)


def test_first_token_sees_only_the_bos():
    """Position 0 predicts the first target token from the BOS alone (the original saw bar 1 here)."""
    model = _model("language_modeling")
    gen = torch.Generator().manual_seed(3)
    outs = [_logits(model, make_batch([bar_sequence(gen, [6, 3])])) for _ in range(3)]
    for out in outs[1:]:
        torch.testing.assert_close(out[0, 0], outs[0][0, 0], rtol=0, atol=0)


@pytest.mark.parametrize("task", ["language_modeling", "translation"])
def test_samples_do_not_see_each_other_or_padding(task: str):
    model = _model(task)
    batch = random_layout_batch(5, translation=task == "translation")
    together = _logits(model, batch)
    lengths = batch.prev_output.lengths.tolist()
    for i, n in enumerate(lengths):
        target = batch.target[i, : n - 1]
        source = None
        if batch.source is not None:
            source = [batch.source.tokens[i, : int(batch.source.lengths[i]) - 1]]
        alone = _logits(model, make_batch([target], source))
        torch.testing.assert_close(together[i, :n], alone[0], rtol=1e-5, atol=1e-5)


def test_translation_reads_the_source():
    model = _model("translation")
    gen = torch.Generator().manual_seed(11)
    target = bar_sequence(gen, [4, 5, 3])
    a = _logits(model, make_batch([target], [bar_sequence(gen, [4, 5, 3])]))
    b = _logits(model, make_batch([target], [bar_sequence(gen, [4, 5, 3])]))
    assert not torch.allclose(a, b, atol=1e-3)

"""Model construction: the original's parameter count and breakdown, options, and forward contracts."""

import pytest
import torch
from model_helpers import bar_sequence, make_batch, random_layout_batch, small_config

from instruct_museformer.errors import UserError
from instruct_museformer.model import MuseformerConfig, build_model
from instruct_museformer.model.museformer import MuseformerLM, MuseformerTranslation, count_parameters

ORIGINAL_PARAMS = 16_141_312  # museformer_lm_v2s1 with dict.txt (V = 560), museformer.md 5.2
TRANSLATION_PARAMS = 36_202_496  # our encoder-decoder at the same sizes (separate embeddings)


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_default_language_model_has_the_originals_parameter_count():
    model = build_model(MuseformerConfig(vocab_size=560, task="language_modeling"))
    assert isinstance(model, MuseformerLM)
    assert count_parameters(model) == ORIGINAL_PARAMS
    dec = model.decoder
    assert _count(dec.embed.tokens) == 286_720
    assert _count(dec.embed.summary) == 1_024
    assert _count(dec.embed.reg_proj) == 459_264
    assert _count(dec.embed.sum_proj) == 393_728
    layer = dec.layers[0]
    assert _count(layer) == 3_678_208
    assert _count(layer.attn) == 1_576_448
    assert _count(layer.ffn) == 2_099_712
    assert _count(layer.attn_norm) + _count(layer.ffn_norm) == 2_048
    assert _count(dec.final_norm) == 1_024 and _count(dec.output) == 286_720
    # shared Q/K/V weights, per-stream Q/K/V biases, key2/value2 without bias, one out-proj bias
    assert layer.attn.qkv_proj.bias is None and layer.attn.kv2_proj.bias is None
    assert layer.attn.qkv_bias_reg.shape == layer.attn.qkv_bias_sum.shape == (3 * 512,)
    assert layer.attn.out_proj.bias is not None
    assert len(dec.layers) == 4 and layer.attn.num_heads == 8


def test_translation_parameter_count():
    model = build_model(MuseformerConfig(vocab_size=560))
    assert isinstance(model, MuseformerTranslation)
    assert count_parameters(model) == TRANSLATION_PARAMS
    # encoder = the decoder minus its output projection; each decoder layer adds LN + 4 projections
    cross = 4 * (512 * 512 + 512) + 2 * 512
    assert _count(model.encoder) == ORIGINAL_PARAMS - 286_720
    assert _count(model.decoder) == ORIGINAL_PARAMS + 4 * cross


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"vocab_size": 0}, "vocab_size"),
        ({"task": "lm"}, "task"),
        ({"attention_impl": "triton"}, "attention_impl"),
        ({"num_attention_heads": 5}, "divisible"),
        ({"block_size": 48}, "block_size"),
        ({"con2con": "((((-2, 0) -4),),)"}, "--con2con: expected ',' or ')' at column 12"),
        ({"src_con2sum": "((None,), (None,), (None,))"}, "--src-con2sum: 3 layer entries"),
        ({"cross_con2con": "((1,),)"}, "--cross-con2con: a range command"),
        ({"con2sum_self": "maybe"}, "--con2sum-self"),
    ],
)
def test_bad_options_are_user_errors(overrides: dict, words: str):
    with pytest.raises(UserError, match=words.replace("(", r"\(").replace(")", r"\)")):
        build_model(small_config(**{"task": "translation", **overrides}))


@pytest.mark.parametrize("num_summary", [0, 2])
def test_summary_count_option(num_summary: int):
    torch.manual_seed(0)
    model = build_model(small_config("translation", num_summary_tokens_each_chunk=num_summary)).eval()
    batch = random_layout_batch(6, translation=True)
    with torch.no_grad():
        out = model(batch)
    assert out.shape == (*batch.target.shape, 40) and out.isfinite().all()


@pytest.mark.parametrize("impl", ["reference", "flex"])
def test_no_complete_bar_and_empty_batch_rows(impl: str):
    """A prefix shorter than one bar has no summary at all (S = 0)."""
    torch.manual_seed(0)
    model = build_model(small_config("translation", attention_impl=impl)).eval()
    gen = torch.Generator().manual_seed(0)
    targets = [bar_sequence(gen, [5], truncated_last=True), bar_sequence(gen, [2], truncated_last=True)]
    batch = make_batch(targets, [bar_sequence(gen, [3], truncated_last=True)] * 2)
    assert int(batch.prev_output.num_complete_bars.max()) == 0
    assert int(batch.source.num_complete_bars.max()) == 0
    with torch.no_grad():
        assert model(batch).isfinite().all()


def test_gradient_checkpointing_gives_the_same_gradients():
    batch = random_layout_batch(8, translation=True)
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = build_model(small_config("translation", gradient_checkpointing=ckpt)).train()
        model(batch).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])


def test_bf16_autocast_still_returns_float32_logits():
    torch.manual_seed(0)
    model = build_model(small_config("translation"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(random_layout_batch(9, translation=True))
    assert out.dtype == torch.float32 and out.isfinite().all()


def test_config_round_trip_rebuilds_the_same_model():
    cfg = small_config("translation", con2con="((((-1, 0),),), (((-2, 0),),))")
    again = MuseformerConfig.from_dict(cfg.to_dict())
    torch.manual_seed(0)
    a = build_model(cfg)
    torch.manual_seed(0)
    b = build_model(again)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_attention_runs_in_bf16_under_autocast(monkeypatch: pytest.MonkeyPatch):
    """A float32 bias must not upcast q/k/v: the flex kernels would run in float32 (many times slower)."""
    import instruct_museformer.model.attention as attention

    seen: set[torch.dtype] = set()
    original = attention.attend

    def spy(q, k, v, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.update({q.dtype, k.dtype, v.dtype})
        return original(q, k, v, *args, **kwargs)

    monkeypatch.setattr(attention, "attend", spy)
    torch.manual_seed(0)
    model = build_model(small_config("translation"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(random_layout_batch(10, translation=True))
    assert seen == {torch.bfloat16}

"""--finetune-from-model: a checkpoint from before the score-marking tokens starts a model with them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_model

from instruct_museformer.errors import UserError
from instruct_museformer.model import build_model
from instruct_museformer.model.config import MuseformerConfig
from instruct_museformer.tokens.tokenizer import build_tokenizer, save_tokenizer
from instruct_museformer.train.checkpoint import load_finetune_weights


def _tiny(vocab: int) -> torch.nn.Module:
    cfg = MuseformerConfig(vocab_size=vocab, task="translation", num_layers=1, encoder_layers=1, attention_embed_dim=16,
                           num_attention_heads=2, ffn_embed_dim=32)
    return build_model(cfg)


def _checkpoint(folder: Path, model: torch.nn.Module, tokenizer) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    save_model(model, str(folder / "model.safetensors"))
    save_tokenizer(tokenizer, folder / "tokenizer.json")
    return folder


@pytest.fixture(scope="module")
def tokenizers():
    return build_tokenizer(score_markings=False), build_tokenizer(score_markings=True)


def test_old_rows_are_copied_and_new_rows_keep_their_initialisation(tmp_path, tokenizers):
    old_tok, new_tok = tokenizers
    old_vocab, new_vocab = len(old_tok.vocab), len(new_tok.vocab)
    assert new_vocab > old_vocab
    torch.manual_seed(0)
    old = _tiny(old_vocab)
    ckpt = _checkpoint(tmp_path / "old", old, old_tok)
    data_bin = tmp_path / "bin"
    data_bin.mkdir()
    save_tokenizer(new_tok, data_bin / "tokenizer.json")
    torch.manual_seed(1)
    new = _tiny(new_vocab)
    fresh = {k: v.clone() for k, v in new.state_dict().items()}
    message = load_finetune_weights(new, ckpt, data_bin)
    assert f"rows {old_vocab} -> {new_vocab}" in message
    grown = 0
    for name, tensor in new.state_dict().items():
        source = old.state_dict()[name]
        assert torch.equal(tensor[: source.shape[0]], source), name
        if tensor.shape != source.shape:
            grown += 1
            assert torch.equal(tensor[source.shape[0]:], fresh[name][source.shape[0]:])
    assert grown >= 2  # the token embedding(s) and the output projection


def test_a_vocabulary_that_renumbers_tokens_or_a_different_size_is_refused(tmp_path, tokenizers, monkeypatch):
    old_tok, new_tok = tokenizers
    ckpt = _checkpoint(tmp_path / "old", _tiny(len(old_tok.vocab)), old_tok)
    data_bin = tmp_path / "bin"
    data_bin.mkdir()
    shuffled = build_tokenizer(score_markings=True)
    first, second = sorted(shuffled.vocab, key=shuffled.vocab.get)[5:7]
    shuffled.vocab[first], shuffled.vocab[second] = shuffled.vocab[second], shuffled.vocab[first]
    (data_bin / "tokenizer.json").write_text("{}")
    import instruct_museformer.train.checkpoint as checkpoint

    ids = {**dict(new_tok.vocab), first: shuffled.vocab[first], second: shuffled.vocab[second]}
    original = checkpoint._token_ids
    monkeypatch.setattr(checkpoint, "_token_ids", lambda path: ids if path == data_bin else original(path))
    with pytest.raises(UserError, match="tokens of the checkpoint have another id"):
        load_finetune_weights(_tiny(len(new_tok.vocab)), ckpt, data_bin)
    wider = MuseformerConfig(vocab_size=len(old_tok.vocab), task="translation", num_layers=1, encoder_layers=1,
                             attention_embed_dim=32, num_attention_heads=2, ffn_embed_dim=32)
    with pytest.raises(UserError, match="a different model size"):
        load_finetune_weights(build_model(wider), ckpt, data_bin)

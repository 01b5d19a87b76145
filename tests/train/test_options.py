"""Flag parsing: the user's whole fairseq-train command, misspellings, bool values, arch defaults."""

from __future__ import annotations

import dataclasses
import shlex

import pytest
from train_helpers import SEED_COMMAND

from instruct_museformer.errors import UserError
from instruct_museformer.model.config import MuseformerConfig
from instruct_museformer.train.options import (
    build_train_parser,
    model_config_from_args,
    parse_bool,
    parse_train_args,
    parse_validate_args,
)


def test_seed_command_parses_with_fairseq_meanings() -> None:
    args = parse_train_args(shlex.split(SEED_COMMAND) + ["--source-lang", "score", "--target-lang", "perf"])
    assert args.data == "data-bin/instruct_museformer"
    assert args.task == "museformer_language_modeling" and args.arch == "museformer_lm_v2s1"
    assert args.adam_betas == (0.9, 0.98) and args.adam_eps == 1e-9 and args.weight_decay == 0.01
    assert args.lr == 5e-4 and args.warmup_updates == 16000 and args.warmup_init_lr == -1.0
    assert args.max_update == 1000000 and args.save_interval_updates == 5000
    assert args.fp16 and args.fp16_init_scale == 128 and args.clip_norm == 0.0
    assert args.truncate_train == 15360 and args.truncate_valid == 10240 and args.truncate_test is None
    assert args.tokens_per_sample == 100000 and args.num_workers == 8 and args.batch_size == 1
    assert args.beat_mask_ts is True and args.take_bos_as_bar is True and args.log_format == "simple"
    cfg = model_config_from_args(args, vocab_size=979, task="translation")
    assert cfg.con2con == "((((-2, 0), -4, -8, -12, -16, -24, -32),),)"
    assert cfg.con2sum.startswith("((((None, -32), (-31, -24),") and cfg.num_layers == 4
    assert cfg.attention_embed_dim == 512 and cfg.vocab_size == 979 and cfg.task == "translation"


def test_misspelled_flag_suggests_the_closest() -> None:
    with pytest.raises(UserError, match=r"unknown flag '--warmup-update'; did you mean '--warmup-updates'\?"):
        parse_train_args(["data", "--batch-size", "1", "--warmup-update", "10"])
    with pytest.raises(UserError, match="did you mean '--tensorboard-logdir'"):
        parse_train_args(["data", "--batch-size", "1", "--tensorbord-logdir", "x"])


def test_abbreviations_are_not_accepted() -> None:
    with pytest.raises(UserError, match="unknown flag '--warmup'"):
        parse_train_args(["data", "--batch-size", "1", "--warmup", "10"])


def test_bad_values_are_user_errors() -> None:
    with pytest.raises(UserError, match="--beat-mask-ts"):
        parse_train_args(["data", "--batch-size", "1", "--beat-mask-ts", "maybe"])
    with pytest.raises(UserError, match="adam-betas"):
        parse_train_args(["data", "--batch-size", "1", "--adam-betas", "(0.9,)"])
    with pytest.raises(UserError, match="--batch-size or --max-tokens"):
        parse_train_args(["data"])
    with pytest.raises(UserError, match="exclude"):
        parse_train_args(["data", "--batch-size", "1", "--fp16", "--bf16"])
    with pytest.raises(UserError, match="--cuda-graphs-max must be >= 1"):
        parse_train_args(["data", "--batch-size", "1", "--cuda-graphs", "--cuda-graphs-max", "0"])


@pytest.mark.parametrize(("text", "value"), [("True", True), ("False", False), ("true", True), ("0", False)])
def test_parse_bool(text: str, value: bool) -> None:
    assert parse_bool(text) is value


def test_every_model_field_is_a_flag_and_arch_defaults_apply() -> None:
    flags = {s for a in build_train_parser()._actions for s in a.option_strings}
    for field in dataclasses.fields(MuseformerConfig):
        if field.name not in ("vocab_size", "task"):
            assert "--" + field.name.replace("_", "-") in flags, field.name
    args = parse_train_args(
        ["d", "--batch-size", "2", "--arch", "museformer_tiny", "--dropout", "0", "--use-bar-abs-pos", "False",
         "--encoder-layers", "1", "--no-scale-embedding"]
    )
    cfg = model_config_from_args(args, vocab_size=50, task="language_modeling")
    assert cfg.attention_embed_dim == 32 and cfg.num_layers == 2  # from the arch
    assert cfg.dropout == 0.0 and cfg.use_bar_abs_pos is False and cfg.encoder_layers == 1
    assert cfg.no_scale_embedding is True  # a bare bool flag means True
    assert cfg.attention_dropout == MuseformerConfig().attention_dropout  # untouched default


def test_validate_flags() -> None:
    args = parse_validate_args(
        shlex.split("data-bin --user-dir museformer --task museformer_language_modeling --path ck/checkpoint_best.pt "
                    "--batch-size 1 --truncate-test 10240 --valid-subset test")
    )
    assert args.path == "ck/checkpoint_best.pt" and args.truncate_test == 10240 and args.valid_subset == "test"
    assert parse_validate_args(["d", "--path", "p"]).batch_size == 1
    with pytest.raises(UserError, match="did you mean '--valid-subset'"):
        parse_validate_args(["d", "--path", "p", "--valid-subsets", "test"])

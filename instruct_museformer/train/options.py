"""fairseq-train / fairseq-validate command lines, parsed without fairseq.

The user's fairseq command must run unchanged with ``imf train`` in place of ``fairseq-train``, so the
flag names, value syntax (``--adam-betas '(0.9, 0.98)'``, ``--beat-mask-ts True``) and defaults are
fairseq 0.10.2's and Museformer's. Every flag given is either honoured or rejected: an unknown or
misspelled flag is a ``UserError`` that names the closest valid one.

Task names: ``museformer_translation`` (score -> perf, the default with a translation data-bin) and
``museformer_language_modeling`` (the original's name). The task actually trained is decided by the
data-bin's files (see :func:`resolve_task`); naming the LM task on a translation data-bin trains the
translation model and says so in the log.

Architectures (``--arch``) only select default hyper-parameters; explicit flags override them:
``museformer_lm_v2s1`` and ``museformer_translation_v2s1`` (the original's sizes: width 512, 4 layers)
and ``museformer_tiny`` (width 32, 2 layers; for tests and smoke runs).

``--take-bos-as-bar``: accepted for compatibility. Our decoder always treats the leading EOS as a clean
one-token prefix (bar id 0), in training as at inference, which removes the original's BOS leak; the
flag is recorded in the checkpoint but changes nothing else.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..model.attention import IMPLS
from ..model.config import MuseformerConfig

TASKS = ("museformer_translation", "museformer_language_modeling", "translation", "language_modeling")

# Architecture name -> overrides of MuseformerConfig's defaults (which are museformer_lm_v2s1's).
ARCHS: dict[str, dict[str, Any]] = {
    "museformer_lm_v2s1": {},
    "museformer_translation_v2s1": {},
    "museformer_tiny": {
        "num_layers": 2,
        "attention_embed_dim": 32,
        "num_attention_heads": 2,
        "ffn_embed_dim": 64,
        "bar_abs_pos_embed_dim": 16,
        "beat_abs_pos_embed_dim": 8,
        "max_bar_abs_pos": 128,
        "block_size": 32,
    },
}

# MuseformerConfig fields that come from the data, not from flags.
_NOT_FLAGS = {"vocab_size", "task"}


def parse_bool(value: str | bool) -> bool:
    """fairseq/Museformer bool flags take ``True``/``False`` (also accepted: 1/0, yes/no, any case)."""
    if isinstance(value, bool):
        return value
    text = value.strip().lower()
    if text in ("true", "1", "yes", "y", "on"):
        return True
    if text in ("false", "0", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got '{value}'")


def parse_float_tuple(value: str) -> tuple[float, ...]:
    """``'(0.9, 0.98)'`` -> (0.9, 0.98), as fairseq evaluates --adam-betas (here with a literal parser)."""
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError) as error:
        raise argparse.ArgumentTypeError(f"expected a tuple of numbers like '(0.9, 0.98)', got '{value}'") from error
    if isinstance(parsed, (int, float)):
        parsed = (parsed,)
    if not isinstance(parsed, (tuple, list)) or not all(isinstance(v, (int, float)) for v in parsed):
        raise argparse.ArgumentTypeError(f"expected a tuple of numbers like '(0.9, 0.98)', got '{value}'")
    return tuple(float(v) for v in parsed)


def parse_lr(value: str) -> float:
    """fairseq's --lr is a comma-separated list (one value per epoch for fixed schedules); we take one."""
    parts = [p for p in value.split(",") if p.strip()]
    try:
        values = [float(p) for p in parts]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected a learning rate like 5e-4, got '{value}'") from error
    if len(values) != 1:
        raise argparse.ArgumentTypeError(f"one learning rate is supported (inverse_sqrt), got '{value}'")
    return values[0]


def parse_scheme(value: str) -> str:
    """A scheme string with its whitespace collapsed: a command pasted over several lines still parses."""
    return " ".join(value.split())


def _optional(kind: type) -> Any:
    def convert(value: str) -> Any:
        return None if value.strip() == "None" else kind(value)

    convert.__name__ = kind.__name__
    return convert


class _Parser(argparse.ArgumentParser):
    """argparse that raises UserError (one line, with a suggestion) instead of printing usage and exiting."""

    def error(self, message: str) -> typing.NoReturn:  # type: ignore[override]
        raise UserError(message)


def _add_model_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per MuseformerConfig field (field name = fairseq flag name); default None = take the arch's."""
    group = parser.add_argument_group("model (MuseformerConfig; defaults from --arch)")
    hints = typing.get_type_hints(MuseformerConfig)
    for field in dataclasses.fields(MuseformerConfig):
        if field.name in _NOT_FLAGS:
            continue
        flag = "--" + field.name.replace("_", "-")
        hint = hints[field.name]
        optional = isinstance(hint, types.UnionType) and type(None) in typing.get_args(hint)
        base = next(a for a in typing.get_args(hint) if a is not type(None)) if optional else hint
        if base is bool:
            group.add_argument(flag, type=parse_bool, nargs="?", const=True, default=None, metavar="BOOL")
        elif base is str and field.name.endswith(("con2con", "con2sum", "sum2con", "sum2sum")):
            group.add_argument(flag, type=parse_scheme, default=None, metavar="SCHEME")
        elif base in (int, float, str):
            group.add_argument(flag, type=_optional(base) if optional else base, default=None)
        else:  # pragma: no cover - a new field type needs a parser here
            raise TypeError(f"no flag parser for MuseformerConfig.{field.name}: {hint}")


def _add_common_data_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", metavar="DATA-BIN", help="data-bin directory written by `imf preprocess`")
    parser.add_argument("--user-dir", default=None, help="accepted for fairseq compatibility; not needed")
    parser.add_argument(
        "--task",
        default="museformer_translation",
        choices=TASKS,
        help="museformer_translation (score->perf) or museformer_language_modeling; the data-bin decides",
    )
    parser.add_argument("-s", "--source-lang", default="score")
    parser.add_argument("-t", "--target-lang", default="perf")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cpu", action="store_true", help="use the CPU even if a GPU is present")
    parser.add_argument("--fp16", action="store_true", help="float16 autocast with dynamic loss scaling")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast (no loss scaling)")
    parser.add_argument("--num-workers", type=int, default=1, help="DataLoader worker processes")
    parser.add_argument("--batch-size", "--max-sentences", dest="batch_size", type=int, default=None)
    parser.add_argument("--max-tokens", type=int, default=None)
    parser.add_argument("--tokens-per-sample", type=int, default=1024, help="max positions (fairseq default 1024)")
    parser.add_argument("--skip-invalid-size-inputs-valid-test", action="store_true")
    for split in ("train", "valid", "test"):
        parser.add_argument(f"--truncate-{split}", type=_optional(int), default=None, metavar="N")
    parser.add_argument(
        "--chunk-train", action="store_true",
        help="cut long training pieces into consecutive bar-aligned chunks of at most --truncate-train tokens "
        "(all of each piece is trained on) instead of keeping only their first chunk",
    )
    parser.add_argument(
        "--carry-markings", action="store_true",
        help="start every --chunk-train chunk after a piece's first with the metronome mark, tempo word and dynamic "
        "in force at its first bar (needs a tokenizer.json with score markings); imf render then does the same "
        "for its windows",
    )
    parser.add_argument(
        "--tempo-relative-to-mark", action="store_true",
        help="train on Tempo tokens moved, bar by bar, so that the score's metronome mark in force is one reference "
        "bin (the model predicts the tempo as a ratio to the mark; imf render moves it back)",
    )
    parser.add_argument("--beat-mask-ts", type=parse_bool, nargs="?", const=True, default=False, metavar="BOOL")
    parser.add_argument("--take-bos-as-bar", type=parse_bool, nargs="?", const=True, default=False, metavar="BOOL")
    parser.add_argument(
        "--eob-token", default=None, metavar="TOKEN",
        help="the token that closes a bar (Museformer's --eob-token): a dictionary id, or a token of the data-bin's "
        "tokenizer.json (default: 4, MidiTok's Bar_None)",
    )
    parser.add_argument("--log-format", default=None, choices=("none", "simple", "tqdm", "json"))
    parser.add_argument("--log-interval", type=int, default=100)
    parser.add_argument("--no-progress-bar", action="store_true")
    parser.add_argument("--criterion", default="cross_entropy", choices=("cross_entropy",))
    parser.add_argument("--device-id", "--local_rank", "--local-rank", dest="device_id", type=int, default=0)


def build_train_parser() -> argparse.ArgumentParser:
    """The `imf train` parser: fairseq-train's flags that Museformer's recipe uses, plus all model flags."""
    parser = _Parser(prog="imf train", allow_abbrev=False, description="Train Museformer (fairseq-train flags).")
    _add_common_data_flags(parser)
    parser.add_argument("-a", "--arch", default="museformer_translation_v2s1", choices=sorted(ARCHS))
    parser.add_argument("--train-subset", default="train")
    parser.add_argument("--valid-subset", default="valid", help="comma-separated splits")
    parser.add_argument("--disable-validation", action="store_true")
    parser.add_argument("--batch-size-valid", type=int, default=None)
    parser.add_argument("--max-tokens-valid", type=int, default=None)
    # levers for expressive targets (train/objective.py, data/augment.py)
    parser.add_argument("--ordinal-smoothing", type=float, default=0.0, metavar="SIGMA",
                        help="soft targets for Tempo/Velocity/Position/Duration tokens: a Gaussian over neighbouring "
                        "bins of the same class, SIGMA bins wide (0 = one-hot, fairseq's cross-entropy)")
    parser.add_argument("--class-loss-weights", default=None, metavar="CLASS=W,...",
                        help="loss weight per target class, e.g. Tempo=2,Velocity=2 (classes: Tempo, Velocity, "
                        "Position, Duration, Pedal, Pitch, Bar, TimeSig; default 1)")
    parser.add_argument("--augment-transpose", type=int, default=0, metavar="N",
                        help="transpose each training sample (both sides) by up to N semitones")
    parser.add_argument("--augment-tempo", type=int, default=0, metavar="N",
                        help="shift every Tempo token of a training sample by up to N bins (3.7%% each)")
    parser.add_argument("--augment-velocity", type=int, default=0, metavar="N",
                        help="shift every Velocity token of a training sample by up to N bins")
    parser.add_argument("--history-noise", type=float, default=0.0, metavar="P",
                        help="move each Tempo/Velocity/Duration token of the decoder input (not the targets) with "
                        "probability P by 1 to --history-noise-bins bins, as a render's own samples are off "
                        "(data/history_noise.py)")
    parser.add_argument("--history-noise-bins", type=int, default=2, metavar="K",
                        help="largest move of --history-noise, in bins of the token's kind (default 2)")
    parser.add_argument("--self-feed", type=float, default=0.0, metavar="P",
                        help="replace each Tempo/Velocity token of the decoder input (not the targets) with "
                        "probability P by the model's own expected bin from a first pass without gradients, the "
                        "history `imf render --ordinal mean` writes (train/self_feed.py)")
    # optimisation
    parser.add_argument("--optimizer", default="adam", choices=("adam",))
    parser.add_argument("--adam-betas", type=parse_float_tuple, default=(0.9, 0.999))
    parser.add_argument("--adam-eps", type=float, default=1e-8)
    parser.add_argument("--weight-decay", "--wd", dest="weight_decay", type=float, default=0.0)
    parser.add_argument("--lr", type=parse_lr, default=0.25)
    parser.add_argument("--lr-scheduler", default="inverse_sqrt", choices=("inverse_sqrt", "fixed"))
    parser.add_argument("--warmup-updates", type=int, default=4000)
    parser.add_argument("--warmup-init-lr", type=float, default=-1.0)
    parser.add_argument("--clip-norm", type=float, default=0.0, help="0 = no clipping (fairseq's default)")
    parser.add_argument("--update-freq", type=int, default=1, help="accumulate this many batches per update")
    parser.add_argument("--max-update", type=int, default=0, help="0 = no limit")
    parser.add_argument("--max-epoch", type=int, default=0, help="0 = no limit")
    parser.add_argument("--fp16-init-scale", type=float, default=2.0**7)
    parser.add_argument("--fp16-scale-window", type=int, default=None)
    parser.add_argument("--fp16-scale-tolerance", type=float, default=0.0)
    parser.add_argument("--min-loss-scale", type=float, default=1e-4)
    parser.add_argument("--threshold-loss-scale", type=float, default=None)
    # checkpoints
    parser.add_argument("--save-dir", default="checkpoints")
    parser.add_argument("--restore-file", default="checkpoint_last")
    parser.add_argument("--finetune-from-model", default=None, metavar="CKPT",
                        help="start from this checkpoint's weights (a fresh optimizer, schedule and data order) "
                        "unless --save-dir already holds a checkpoint_last to resume; a vocabulary that only "
                        "grew (new token ids after the old ones) keeps the old rows")
    parser.add_argument("--reset-optimizer", action="store_true")
    parser.add_argument("--reset-lr-scheduler", action="store_true")
    parser.add_argument("--reset-dataloader", action="store_true")
    parser.add_argument("--reset-meters", action="store_true")
    parser.add_argument("--save-interval", type=int, default=1, help="save every N epochs")
    parser.add_argument("--save-interval-updates", type=int, default=0, help="save every N updates (0 = off)")
    parser.add_argument("--keep-interval-updates", type=int, default=-1, help="keep the last N update checkpoints")
    parser.add_argument("--keep-last-epochs", type=int, default=-1, help="keep the last N epoch checkpoints")
    parser.add_argument("--no-save", action="store_true")
    parser.add_argument("--no-epoch-checkpoints", action="store_true")
    parser.add_argument("--no-last-checkpoints", action="store_true")
    parser.add_argument("--validate-interval", type=int, default=1, help="validate every N epochs")
    parser.add_argument("--validate-interval-updates", type=int, default=0)
    # logging
    parser.add_argument("--tensorboard-logdir", default=None)
    # distributed
    parser.add_argument("--distributed-world-size", type=int, default=None, help="default: all visible GPUs")
    parser.add_argument("--ddp-backend", default="c10d", choices=("c10d", "pytorch_ddp", "no_c10d", "legacy_ddp"))
    parser.add_argument("--find-unused-parameters", action="store_true")
    # speed
    parser.add_argument(
        "--cuda-graphs", action="store_true",
        help="replay each batch's forward and backward from a CUDA graph, one per batch shape (GPU; needs --bf16 "
        "or --fp16): removes the host overhead that bounds steps below ~30k tokens",
    )
    parser.add_argument(
        "--cuda-graphs-max", type=int, default=256, metavar="N",
        help="batch shapes whose graphs are kept at once (least recently used dropped); (n)ASAP with the seed's "
        "flags has 139-239 (benchmarks/graph_signatures.py); each keeps its batch's tensors (2-5 MiB at 15,360 tokens)",
    )
    _add_model_flags(parser)
    return parser


def build_validate_parser() -> argparse.ArgumentParser:
    """The `imf validate` parser: fairseq-validate's flags (the checkpoint gives the model)."""
    parser = _Parser(prog="imf validate", allow_abbrev=False, description="Loss and perplexity of a checkpoint.")
    _add_common_data_flags(parser)
    parser.add_argument("--path", required=True, help="checkpoint directory (checkpoint_best, ...)")
    parser.add_argument("--valid-subset", default="valid", help="comma-separated splits")
    parser.add_argument("--batch-size-valid", type=int, default=None)
    parser.add_argument("--max-tokens-valid", type=int, default=None)
    parser.add_argument(
        "--attention-impl", choices=IMPLS, default=None,
        help="attention backend for this run (default: the checkpoint's); all give the same loss",
    )
    parser.add_argument(
        "--results-json", type=Path, default=None, metavar="FILE",
        help="also write the loss (bits) and perplexity of each subset as JSON (imf evaluate --perplexity-json)",
    )
    return parser


def _option_strings(parser: argparse.ArgumentParser) -> list[str]:
    return [s for action in parser._actions for s in action.option_strings if s.startswith("--")]


def parse_args(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``; an unknown flag is a UserError naming the closest valid flag."""
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        flags = [u for u in unknown if u.startswith("-")]
        first = (flags or unknown)[0]
        name = first.split("=", 1)[0]
        close = difflib.get_close_matches(name, _option_strings(parser), n=1, cutoff=0.6)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        kind = "unknown flag" if flags else "unexpected argument"
        raise UserError(f"{kind} '{first}'{hint}")
    _check(args, parser)
    args._explicit = given_flags(parser, argv)
    return args


def given_flags(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """Destinations set on the command line itself (fairseq-validate lets only those override a checkpoint)."""
    saved = [(action, action.default) for action in parser._actions]
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    try:
        given, _ = parser.parse_known_args(argv)
    finally:
        for action, default in saved:
            action.default = default
    return set(vars(given))


def _check(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if args.fp16 and args.bf16:
        raise UserError("--fp16 and --bf16 exclude each other")
    if args.batch_size is None and args.max_tokens is None:
        if parser.prog != "imf validate":
            raise UserError("give --batch-size or --max-tokens (fairseq needs one of them)")
        args.batch_size = 1  # validation: one sample per batch unless told otherwise
    for name in ("batch_size", "max_tokens", "tokens_per_sample"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if getattr(args, "update_freq", 1) < 1:
        raise UserError(f"--update-freq must be >= 1, got {args.update_freq}")
    if getattr(args, "adam_betas", None) is not None and len(args.adam_betas) != 2:
        raise UserError(f"--adam-betas needs two values, got {args.adam_betas}")
    if getattr(args, "cuda_graphs_max", 1) < 1:
        raise UserError(f"--cuda-graphs-max must be >= 1, got {args.cuda_graphs_max}")
    if args.num_workers < 0:
        raise UserError(f"--num-workers must be >= 0, got {args.num_workers}")


def parse_train_args(argv: list[str]) -> argparse.Namespace:
    return parse_args(build_train_parser(), argv)


def parse_validate_args(argv: list[str]) -> argparse.Namespace:
    return parse_args(build_validate_parser(), argv)


def model_config_from_args(args: argparse.Namespace, *, vocab_size: int, task: str) -> MuseformerConfig:
    """MuseformerConfig from --arch defaults overridden by the model flags actually given."""
    values: dict[str, Any] = dict(ARCHS[args.arch])
    for field in dataclasses.fields(MuseformerConfig):
        if field.name in _NOT_FLAGS:
            continue
        given = getattr(args, field.name, None)
        if given is not None:
            values[field.name] = given
    values["vocab_size"] = vocab_size
    values["task"] = task
    return MuseformerConfig(**values)


def task_kind(task_flag: str) -> str:
    """Flag task name -> MuseformerConfig.task ("translation" or "language_modeling")."""
    return "language_modeling" if "language_modeling" in task_flag else "translation"


def args_to_json(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed flags as JSON-safe values (tuples -> lists), for checkpoints."""
    out: dict[str, Any] = {}
    for key, value in vars(args).items():
        if not key.startswith("_"):
            out[key] = list(value) if isinstance(value, tuple) else value
    return out

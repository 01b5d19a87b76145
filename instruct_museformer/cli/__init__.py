"""``imf``: a thin shell over the Python API. Each subcommand module parses its own flags.

Subcommands whose flags come from fairseq (preprocess, train, validate, generate) keep fairseq's
names, so a fairseq command line runs with ``imf <cmd>`` in place of ``fairseq-<cmd>``.
"""

from __future__ import annotations

import difflib
import importlib
import sys

from ..errors import UserError

# subcommand -> (module under instruct_museformer.cli, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "tokenize": ("tokenize", "score + performance pairs of a corpus -> {split}.score/.perf token files"),
    "roundtrip": ("roundtrip", "performance MIDI -> tokens -> MIDI errors (onset, velocity, pedal)"),
    "preprocess": ("preprocess", "binarize token files into a fairseq data-bin (fairseq-preprocess flags)"),
    "train": ("train", "train Museformer (fairseq-train flags)"),
    "validate": ("validate", "loss and perplexity of a checkpoint (fairseq-validate flags)"),
    "generate": ("generate", "generate token lines for a data-bin split (fairseq-generate flags)"),
    "render": ("render", "score -> expressive performance MIDI"),
    "evaluate": ("evaluate", "compare renderings with human performances"),
    "diagnose": ("diagnose", "teacher-forced loss per token class and expected-value correlations of a checkpoint"),
}


def _usage() -> str:
    lines = ["usage: imf <command> [options]", "", "commands:"]
    lines += [f"  {name:<11} {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        close = difflib.get_close_matches(name, SUBCOMMANDS, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        print(f"imf: unknown command '{name}'{hint}\n\n{_usage()}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(f"{__name__}.{SUBCOMMANDS[name][0]}")
    except ModuleNotFoundError as error:
        if error.name == f"{__name__}.{SUBCOMMANDS[name][0]}":
            print(f"imf {name}: not available in this version", file=sys.stderr)
            return 2
        raise
    try:
        return int(module.main(rest) or 0)
    except UserError as error:
        print(f"imf {name}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"imf {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

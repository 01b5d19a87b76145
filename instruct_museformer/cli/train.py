"""``imf train DATA-BIN [fairseq-train flags]``: see instruct_museformer.train.options for the flags."""

from __future__ import annotations

from ..train.options import parse_train_args
from ..train.run import train


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        from ..train.options import build_train_parser

        build_train_parser().print_help()
        return 0
    return train(parse_train_args(argv))

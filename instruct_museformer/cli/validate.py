"""``imf validate DATA-BIN --path CKPT [--valid-subset test --truncate-test N]``: fairseq-validate's report."""

from __future__ import annotations

from ..train.options import parse_validate_args
from ..train.run import validate


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        from ..train.options import build_validate_parser

        build_validate_parser().print_help()
        return 0
    return validate(parse_validate_args(argv))

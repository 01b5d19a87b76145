"""``imf preprocess``: fairseq-preprocess's flags -> :func:`instruct_museformer.data.preprocess.preprocess`.

A fairseq command line runs unchanged with ``imf preprocess`` in place of ``fairseq-preprocess``.
An unknown or misspelled flag is an error that names the closest valid flag.
"""

from __future__ import annotations

import argparse
import difflib
from typing import NoReturn

from ..data.preprocess import PreprocessOptions, preprocess
from ..errors import UserError


class _Parser(argparse.ArgumentParser):
    """argparse that raises UserError (one line, exit 2 through the dispatcher) instead of exiting."""

    def error(self, message: str) -> NoReturn:
        raise UserError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="imf preprocess",
        description="Binarize token files into a fairseq data-bin (fairseq-preprocess flags).",
        allow_abbrev=False,
    )
    p.add_argument("-s", "--source-lang", default=None, metavar="SRC", help="source language (file suffix)")
    p.add_argument("-t", "--target-lang", default=None, metavar="TARGET", help="target language (file suffix)")
    p.add_argument("--trainpref", metavar="FP", default=None, help="train file prefix (also builds dictionaries)")
    p.add_argument("--validpref", metavar="FP", default=None, help="comma separated valid file prefixes")
    p.add_argument("--testpref", metavar="FP", default=None, help="comma separated test file prefixes")
    p.add_argument("--align-suffix", metavar="FP", default=None, help="not supported (alignment datasets)")
    p.add_argument("--destdir", metavar="DIR", default="data-bin", help="destination dir")
    p.add_argument("--thresholdtgt", metavar="N", default=0, type=int, help="refused when building a dict")
    p.add_argument("--thresholdsrc", metavar="N", default=0, type=int, help="refused when building a dict")
    p.add_argument("--tgtdict", metavar="FP", help="reuse given target dictionary")
    p.add_argument("--srcdict", metavar="FP", help="reuse given source dictionary")
    p.add_argument("--nwordstgt", metavar="N", default=-1, type=int, help="refused when building a dict")
    p.add_argument("--nwordssrc", metavar="N", default=-1, type=int, help="refused when building a dict")
    p.add_argument("--alignfile", metavar="ALIGN", default=None, help="not supported")
    p.add_argument("--dataset-impl", metavar="FORMAT", default="mmap", help="output format; only mmap")
    p.add_argument("--joined-dictionary", action="store_true", help="one dictionary for both languages")
    p.add_argument("--only-source", action="store_true", help="only process the source language (LM data)")
    p.add_argument("--padding-factor", metavar="N", default=8, type=int, help="pad a built dictionary's size")
    p.add_argument("--workers", metavar="N", default=1, type=int, help="number of parallel workers")
    p.add_argument("--dict-only", action="store_true", help="only write the dictionaries")
    p.add_argument("--eob-token", metavar="ID", default=4, type=int,
                   help="the bar token's id, for the paired-bars check (imf train --eob-token; default 4)")
    return p


def _option_strings(parser: argparse.ArgumentParser) -> list[str]:
    return [s for action in parser._actions for s in action.option_strings]


def parse_args(argv: list[str]) -> PreprocessOptions:
    parser = build_parser()
    namespace, unknown = parser.parse_known_args(argv)
    if unknown:
        flag = next((u for u in unknown if u.startswith("-")), unknown[0])
        if not flag.startswith("-"):
            raise UserError(f"unexpected argument {flag!r}")
        name = flag.split("=", 1)[0]
        close = difflib.get_close_matches(name, _option_strings(parser), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else " (see imf preprocess --help)"
        raise UserError(f"unknown option {name}{hint}")
    return PreprocessOptions(**vars(namespace))


def main(argv: list[str]) -> int:
    opts = parse_args(argv)
    report = preprocess(opts)
    total = sum(s.sequences for s in report.splits)
    print(f"imf preprocess: wrote {len(report.files)} files ({total} sequences) to {report.destdir} "
          f"in {report.seconds:.1f}s")
    return 0

"""fairseq-style logging: ``simple`` lines, a tqdm bar, JSON lines, and TensorBoard scalars.

Line formats follow fairseq 0.10.2 so that existing log parsers keep working:

* every --log-interval updates (tag ``train_inner``):
  ``epoch 001:     10 / 123 loss=9.123, ppl=557.43, wps=1234, ups=0.5, wpb=..., bsz=..., num_updates=10, ...``
* end of epoch (tag ``train``) and validation (tag ``valid``): ``epoch 001 | valid on 'valid' subset | loss 8.9 | ...``

Losses are in base 2 and ``ppl = 2 ** loss``, as fairseq's cross_entropy criterion reports them.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Mapping
from numbers import Number
from pathlib import Path
from typing import Any

LOG_FORMAT = "%(asctime)s | %(levelname)s | %(name)s | %(message)s"
LOG_DATEFMT = "%Y-%m-%d %H:%M:%S"


def setup_logging(rank: int = 0) -> None:
    """fairseq's log layout on stdout; only rank 0 prints INFO (the other ranks print warnings)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_imf", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(LOG_FORMAT, LOG_DATEFMT))
    handler._imf = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.INFO if rank == 0 else logging.WARNING)


def perplexity(loss_base2: float) -> float:
    """2 ** loss, inf where that overflows (fairseq's get_perplexity)."""
    try:
        return round(2.0**loss_base2, 2)
    except OverflowError:
        return float("inf")


def format_stat(value: Any) -> str:
    if isinstance(value, Number):
        return f"{value:g}"
    return str(value)


def round_stats(stats: Mapping[str, float]) -> dict[str, Any]:
    """Round as fairseq's meters do (loss 3 decimals, ppl 2, throughputs to whole numbers)."""
    digits = {"loss": 3, "nll_loss": 3, "ppl": 2, "wps": 0, "ups": 2, "wpb": 1, "bsz": 1, "gnorm": 3,
              "loss_scale": 4, "train_wall": 0, "wall": 0, "best_loss": 3}
    out: dict[str, Any] = {}
    for key, value in stats.items():
        if isinstance(value, float) and key in digits and math.isfinite(value):
            value = round(value, digits[key])
            if digits[key] == 0:
                value = int(value)
        out[key] = value
    return out


class ProgressLogger:
    """Writes the three kinds of lines and the TensorBoard scalars (rank 0 only)."""

    def __init__(
        self,
        log_format: str | None,
        tensorboard_logdir: str | None = None,
        *,
        enabled: bool = True,
        no_progress_bar: bool = False,
    ) -> None:
        self.enabled = enabled
        tty = sys.stderr.isatty()
        if log_format is None:
            log_format = "tqdm" if tty and not no_progress_bar else "simple"
        if no_progress_bar and log_format == "tqdm":
            log_format = "simple"
        self.log_format = log_format
        self.logger = logging.getLogger("imf.train")
        self.tb_dir = Path(tensorboard_logdir) if tensorboard_logdir and enabled else None
        self._writers: dict[str, Any] = {}
        self._bar: Any = None

    # -- progress bar (tqdm format) -----------------------------------------------------------------
    def start_epoch(self, epoch: int, total: int, initial: int = 0) -> None:
        if self.enabled and self.log_format == "tqdm":
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=f"epoch {epoch:03d}", leave=False, file=sys.stderr)

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def end_epoch(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    # -- lines ------------------------------------------------------------------------------------
    def log_inner(self, stats: Mapping[str, Any], *, epoch: int, position: int, total: int, step: int) -> None:
        """The every-N-updates line (fairseq's train_inner)."""
        if not self.enabled:
            return
        stats = round_stats(stats)
        self._tensorboard("train_inner", stats, step)
        if self.log_format == "none":
            return
        if self.log_format == "tqdm" and self._bar is not None:
            self._bar.set_postfix({k: format_stat(v) for k, v in stats.items()}, refresh=False)
            return
        if self.log_format == "json":
            record = {"epoch": epoch, "update": round(epoch - 1 + position / max(total, 1), 3), **stats}
            logging.getLogger("train_inner").info(json.dumps(record))
            return
        body = ", ".join(f"{k}={format_stat(v)}" for k, v in stats.items())
        width = len(str(total))
        logging.getLogger("train_inner").info(f"epoch {epoch:03d}: {position:>{width}d} / {total} {body}")

    def log_summary(self, stats: Mapping[str, Any], *, tag: str, epoch: int | None, step: int,
                    prefix: str = "") -> None:
        """End-of-epoch or validation line (``epoch 001 | valid on 'valid' subset | loss ... | ppl ...``)."""
        if not self.enabled:
            return
        stats = round_stats(stats)
        self._tensorboard(tag if tag != "valid" else "valid", stats, step)
        if self.log_format == "json":
            logging.getLogger(tag).info(json.dumps({"epoch": epoch, **stats}))
            return
        parts = [] if epoch is None else [f"epoch {epoch:03d}"]
        if prefix:
            parts.append(prefix)
        parts += [f"{k} {format_stat(v)}" for k, v in stats.items()]
        logging.getLogger(tag).info(" | ".join(parts))

    # -- TensorBoard --------------------------------------------------------------------------------
    def _tensorboard(self, tag: str, stats: Mapping[str, Any], step: int) -> None:
        if self.tb_dir is None:
            return
        writer = self._writers.get(tag)
        if writer is None:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(self.tb_dir / tag))
            self._writers[tag] = writer
        for key, value in stats.items():
            if isinstance(value, Number) and key != "num_updates":
                writer.add_scalar(key, float(value), step)
        writer.flush()

    def close(self) -> None:
        self.end_epoch()
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()

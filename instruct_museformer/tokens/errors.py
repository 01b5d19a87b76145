"""The error a pair tokenization raises, with a machine-readable reason for corpus reports."""

from __future__ import annotations

from ..errors import UserError

REASONS = ("missing file", "parse error", "no alignment", "bar mismatch", "alignment below threshold")


class TokenizationError(UserError):
    """A score/performance pair that cannot be tokenized; ``reason`` is one of :data:`REASONS`.

    It is a :class:`UserError` (bad input, not a bug), so the CLI prints it as one line; corpus drivers
    catch it to skip the pair and count ``reason``. The message names the offending file.
    """

    def __init__(self, reason: str, message: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown tokenization error reason {reason!r}")
        super().__init__(message)
        self.reason = reason

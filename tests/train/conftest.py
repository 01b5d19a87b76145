"""Fixtures of tests/train (helpers live in train_helpers.py, importable by that unique name)."""

from __future__ import annotations

from pathlib import Path

import pytest
from train_helpers import make_data_bin


@pytest.fixture
def data_bin(tmp_path: Path) -> Path:
    return make_data_bin(tmp_path)

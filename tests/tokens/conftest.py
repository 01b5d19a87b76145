"""Shared fixtures for the tokenizer tests: the one tokenizer, quiet partitura warnings."""

from __future__ import annotations

import warnings

import pytest


@pytest.fixture(scope="session")
def tokenizer():
    from instruct_museformer.tokens.tokenizer import build_tokenizer

    return build_tokenizer()


@pytest.fixture(autouse=True)
def _quiet_partitura():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield

"""Museformer (fine- and coarse-grained bar attention): translation model, language model, build_model."""

from .config import MuseformerConfig
from .museformer import build_model

__all__ = ["MuseformerConfig", "build_model"]

"""The model shipped inside the package: what ``imf render`` uses when no ``--checkpoint`` is given.

It lives in ``instruct_museformer/assets/default_model/`` (package data, so a non-editable install has it
too) as an inference-only checkpoint directory: float16 ``model.safetensors``, ``config.json``, the two
dictionaries and ``tokenizer.json`` -- what ``train.checkpoint.export_inference_checkpoint`` writes.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "assets" / "default_model"
DEFAULT_MODEL_FILES = ("model.safetensors", "config.json", "tokenizer.json", "dict.score.txt", "dict.perf.txt")


def default_model_dir() -> Path:
    """The packaged model's directory; a one-line UserError when it is missing or incomplete."""
    directory = DEFAULT_MODEL_DIR
    if not directory.is_dir():
        raise UserError(f"no default model in this installation ({directory} is missing); pass --checkpoint CKPT")
    missing = [name for name in DEFAULT_MODEL_FILES if not (directory / name).is_file()]
    if missing:
        raise UserError(
            f"the default model in this installation is incomplete ({directory} lacks {', '.join(missing)}); "
            "pass --checkpoint CKPT"
        )
    return directory

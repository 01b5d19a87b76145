"""Checkpoints as self-contained directories: safetensors weights + JSON, never pickle.

A checkpoint directory (``checkpoint_last``, ``checkpoint_best``, ``checkpoint_{epoch}_{updates}``,
``checkpoint{epoch}``) holds:

* ``model.safetensors``: the weights;
* ``config.json``: the MuseformerConfig, the training flags, the dictionaries (their lines), the tokenizer
  configuration (the data-bin's tokenizer.json) and where training stood -- all a renderer needs;
* ``dict.<lang>.txt`` and ``tokenizer.json``: copies of the data-bin's files, for tools that want files;
* ``trainer_state.json``: epoch, position within the epoch, update count, best loss, scheduler and
  loss-scaler state, optimizer step counts, Python RNG state;
* ``optimizer.safetensors`` (Adam moments) and ``rng.safetensors`` (torch / CUDA / numpy RNG states).

Writes are atomic: everything is written into a temporary sibling directory and fsynced, then the old
directory is moved aside to ``<name>.previous``, the new one renamed into place and the old one removed.
A crash at any point leaves either ``<name>`` or ``<name>.previous`` complete, and
:func:`resolve_checkpoint` falls back to ``.previous`` when ``<name>`` is missing.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model

from ..errors import UserError
from ..model.config import MuseformerConfig

FORMAT_NAME = "instruct-museformer-checkpoint"
FORMAT_VERSION = 1
_PREVIOUS = ".previous"
_TMP_PREFIX = ".tmp-"


@dataclass
class CheckpointContents:
    """Everything one checkpoint directory stores (built by the trainer, read back by :func:`load_training_state`)."""

    model: torch.nn.Module
    cfg: MuseformerConfig
    args: dict[str, Any]
    trainer_state: dict[str, Any]
    optimizer_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    rng_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    data_bin: Path | None = None
    langs: tuple[str, ...] = ("score", "perf")


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _data_bin_extras(data_bin: Path | None, langs: Sequence[str]) -> tuple[dict[str, list[str]], Any, list[Path]]:
    """(dictionary lines per file name, parsed tokenizer.json or None, files to copy) from a data-bin."""
    dictionaries: dict[str, list[str]] = {}
    files: list[Path] = []
    tokenizer = None
    if data_bin is None:
        return dictionaries, tokenizer, files
    candidates = [data_bin / f"dict.{lang}.txt" for lang in langs] + [data_bin / "dict.txt"]
    for path in candidates:
        if path.is_file():
            dictionaries[path.name] = path.read_text(encoding="utf-8").splitlines()
            files.append(path)
    tok = data_bin / "tokenizer.json"
    if tok.is_file():
        tokenizer = json.loads(tok.read_text(encoding="utf-8"))
        files.append(tok)
    return dictionaries, tokenizer, files


def _write_contents(directory: Path, contents: CheckpointContents) -> None:
    model = contents.model
    save_model(model, str(directory / "model.safetensors"))
    dictionaries, tokenizer, files = _data_bin_extras(contents.data_bin, contents.langs)
    for path in files:
        shutil.copyfile(path, directory / path.name)
    config = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "model": contents.cfg.to_dict(),
        "args": contents.args,
        "dictionaries": dictionaries,
        "tokenizer": tokenizer,
        "num_updates": contents.trainer_state.get("num_updates", 0),
        "epoch": contents.trainer_state.get("epoch", 0),
    }
    _write_json(directory / "config.json", config)
    _write_json(directory / "trainer_state.json", contents.trainer_state)
    save_file(contents.optimizer_tensors, str(directory / "optimizer.safetensors"))
    save_file(contents.rng_tensors, str(directory / "rng.safetensors"))
    for path in directory.iterdir():
        _fsync_file(path)
    _fsync_dir(directory)


def _publish(tmp: Path, target: Path) -> None:
    """Replace ``target`` by the complete directory ``tmp`` so that a crash never loses both."""
    previous = target.with_name(target.name + _PREVIOUS)
    if previous.exists():
        if target.exists():
            shutil.rmtree(previous)
        else:  # an earlier crash between the two renames: .previous is the valid one
            os.rename(previous, target)
    if target.exists():
        os.rename(target, previous)
    os.rename(tmp, target)
    _fsync_dir(target.parent)
    if previous.exists():
        shutil.rmtree(previous)


def _link_copy(source: Path, destination: Path) -> None:
    destination.mkdir()
    for path in source.iterdir():
        try:
            os.link(path, destination / path.name)
        except OSError:
            shutil.copy2(path, destination / path.name)
    _fsync_dir(destination)


def save_checkpoint(save_dir: Path, names: Sequence[str], contents: CheckpointContents) -> list[Path]:
    """Write ``contents`` once and publish it atomically under every name in ``names``."""
    if not names:
        return []
    save_dir.mkdir(parents=True, exist_ok=True)
    for stale in save_dir.glob(_TMP_PREFIX + "*"):
        shutil.rmtree(stale, ignore_errors=True)
    first = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=save_dir))
    written: list[Path] = []
    try:
        _write_contents(first, contents)
        for name in names[1:]:
            copy = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=save_dir))
            copy.rmdir()
            _link_copy(first, copy)
            _publish(copy, save_dir / name)
            written.append(save_dir / name)
        _publish(first, save_dir / names[0])
        written.insert(0, save_dir / names[0])
    finally:
        for stale in save_dir.glob(_TMP_PREFIX + "*"):
            shutil.rmtree(stale, ignore_errors=True)
    return written


def prune_checkpoints(save_dir: Path, keep_interval_updates: int, keep_last_epochs: int) -> None:
    """Remove old ``checkpoint_{epoch}_{updates}`` / ``checkpoint{epoch}`` directories beyond the limits."""
    if keep_interval_updates > 0:
        found = _numbered(save_dir, re.compile(r"checkpoint_\d+_(\d+)"))
        for path in found[keep_interval_updates:]:
            shutil.rmtree(path, ignore_errors=True)
    if keep_last_epochs > 0:
        found = _numbered(save_dir, re.compile(r"checkpoint(\d+)"))
        for path in found[keep_last_epochs:]:
            shutil.rmtree(path, ignore_errors=True)


def _numbered(save_dir: Path, pattern: re.Pattern[str]) -> list[Path]:
    """Directories matching ``pattern`` (group 1 = number), newest first."""
    hits = []
    for path in save_dir.iterdir() if save_dir.is_dir() else []:
        match = pattern.fullmatch(path.name)
        if match and path.is_dir():
            hits.append((int(match.group(1)), path))
    return [path for _, path in sorted(hits, key=lambda item: item[0], reverse=True)]


def resolve_checkpoint(path: Path) -> Path:
    """The complete checkpoint directory for ``path`` (``.pt`` suffix tolerated; falls back to ``.previous``)."""
    candidates = [path]
    if path.suffix == ".pt":
        candidates.append(path.with_suffix(""))
    for candidate in candidates:
        for option in (candidate, candidate.with_name(candidate.name + _PREVIOUS)):
            if (option / "config.json").is_file() and (option / "model.safetensors").is_file():
                return option
    if path.is_file():
        raise UserError(f"{path}: not an instruct-museformer checkpoint directory (fairseq .pt files are not read)")
    raise UserError(f"{path}: no checkpoint there (expected a directory with config.json and model.safetensors)")


def read_config(path: Path) -> dict[str, Any]:
    """config.json of a checkpoint directory, checked for format."""
    directory = resolve_checkpoint(path)
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise UserError(f"{directory / 'config.json'}: unreadable checkpoint config ({error})") from error
    if not isinstance(config, dict) or config.get("format") != FORMAT_NAME:
        raise UserError(f"{directory / 'config.json'}: not an instruct-museformer checkpoint config")
    if config.get("version") != FORMAT_VERSION:
        raise UserError(f"{directory / 'config.json'}: checkpoint format version {config.get('version')} unsupported")
    config["path"] = str(directory)
    return config


def load_model_weights(model: torch.nn.Module, path: Path) -> None:
    directory = resolve_checkpoint(path)
    try:
        load_model(model, directory / "model.safetensors", strict=True)
    except (SafetensorError, RuntimeError, OSError) as error:
        raise UserError(f"{directory / 'model.safetensors'}: weights do not fit the model ({error})") from error


def load_checkpoint_model(
    path: Path | str, attention_impl: str | None = None
) -> tuple[torch.nn.Module, MuseformerConfig, dict[str, Any]]:
    """(model in eval mode on CPU, its config, the checkpoint's config.json) -- what render/validate need.

    ``attention_impl`` overrides the checkpoint's (both give the same outputs; they differ in speed).
    """
    from ..model.museformer import build_model

    metadata = read_config(Path(path))
    try:
        cfg = MuseformerConfig.from_dict(metadata["model"])
    except (KeyError, TypeError, ValueError) as error:
        raise UserError(f"{metadata['path']}/config.json: bad model config ({error})") from error
    if attention_impl is not None:
        cfg = replace(cfg, attention_impl=attention_impl)
    model = build_model(cfg)
    load_model_weights(model, Path(metadata["path"]))
    model.eval()
    return model, cfg, metadata


def load_training_state(
    path: Path,
) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(trainer_state.json, optimizer tensors, RNG tensors) of a checkpoint directory."""
    directory = resolve_checkpoint(path)
    try:
        state = json.loads((directory / "trainer_state.json").read_text(encoding="utf-8"))
        optimizer = load_file(str(directory / "optimizer.safetensors"))
        rng = load_file(str(directory / "rng.safetensors"))
    except (OSError, json.JSONDecodeError, SafetensorError) as error:
        raise UserError(f"{directory}: incomplete training state ({error})") from error
    return state, optimizer, rng


def capture_rng() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(RNG states as tensors, Python's random state as JSON) of this process."""
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = state
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["numpy_keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    version, internal, gauss = random.getstate()
    py = {"numpy": [kind, int(pos), int(has_gauss), float(cached)], "python": [version, list(internal), gauss]}
    return tensors, py


def restore_rng(tensors: dict[str, torch.Tensor], py: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng` (CUDA states only where the devices exist)."""
    torch.set_rng_state(tensors["torch_cpu"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
        if states and len(states) <= torch.cuda.device_count():
            for i, state in enumerate(states):
                torch.cuda.set_rng_state(state, i)
    if "numpy_keys" in tensors and "numpy" in py:
        kind, pos, has_gauss, cached = py["numpy"]
        keys = tensors["numpy_keys"].numpy().astype(np.uint32)
        np.random.set_state((kind, keys, int(pos), int(has_gauss), float(cached)))
    if "python" in py:
        version, internal, gauss = py["python"]
        random.setstate((version, tuple(internal), gauss))


INFERENCE_FILES = ("config.json", "tokenizer.json")


def export_inference_checkpoint(source: Path, destination: Path, dtype: torch.dtype = torch.float16) -> Path:
    """Copy a checkpoint for rendering only: weights in ``dtype`` (half the size), no optimizer state.

    Loading casts the weights back into the model's float32 parameters, so the exported copy renders
    with the same code path as a training checkpoint.
    """
    directory = resolve_checkpoint(Path(source))
    tmp = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
    tmp.chmod(0o755)  # a shipped model must be readable by everyone, unlike mkdtemp's default
    try:
        weights = load_file(str(directory / "model.safetensors"))
        save_file({k: v.to(dtype) if v.is_floating_point() else v for k, v in weights.items()},
                  str(tmp / "model.safetensors"))
        for name in (*INFERENCE_FILES, *(p.name for p in directory.glob("dict.*.txt"))):
            if (directory / name).is_file():
                shutil.copy2(directory / name, tmp / name)
        _publish(tmp, destination)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return destination


def _token_ids(path: Path) -> dict[str, int] | None:
    """token -> id of the tokenizer.json in a folder (a checkpoint or a data-bin), or None without one."""
    file = path / "tokenizer.json"
    if not file.is_file():
        return None
    from ..data.vocabulary import load_miditok

    return dict(load_miditok(file).vocab)


def load_finetune_weights(model: torch.nn.Module, path: Path, data_bin: Path | None) -> str:
    """Start from another checkpoint's weights (``--finetune-from-model``), growing the vocabulary if needed.

    A model trained before tokens were added to the vocabulary (score markings: ids appended after the old
    ones) keeps everything it learnt: the embeddings and output rows of the old ids are copied, the new ids
    keep their fresh initialisation. That is only sound when every old token keeps its id, which is checked
    against both tokenizers; any other difference of shape is an error naming the tensor.
    """
    directory = resolve_checkpoint(path)
    try:
        weights = load_file(str(directory / "model.safetensors"))
    except (SafetensorError, OSError) as error:
        raise UserError(f"{directory / 'model.safetensors'}: unreadable weights ({error})") from error
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    if missing or unexpected:
        raise UserError(f"{directory}: --finetune-from-model weights do not fit the model (missing "
                        f"{', '.join(missing[:3]) or 'none'}; unexpected {', '.join(unexpected[:3]) or 'none'})")
    grown = []
    for name, tensor in own.items():
        old = weights[name]
        if old.shape == tensor.shape:
            continue
        if old.dim() != tensor.dim() or old.shape[1:] != tensor.shape[1:] or old.shape[0] > tensor.shape[0]:
            raise UserError(f"{directory}: --finetune-from-model: {name} is {tuple(old.shape)} there, "
                            f"{tuple(tensor.shape)} here (a different model size)")
        grown.append(name)
    if grown:
        old_ids = _token_ids(directory)
        new_ids = _token_ids(data_bin) if data_bin is not None else None
        if old_ids is None or new_ids is None:
            raise UserError(f"{directory}: --finetune-from-model with a larger vocabulary needs the tokenizer.json "
                            "of both the checkpoint and the data-bin (to check that every old token keeps its id)")
        moved = [t for t, i in old_ids.items() if new_ids.get(t) != i]
        if moved:
            raise UserError(f"{directory}: --finetune-from-model: {len(moved)} tokens of the checkpoint have another "
                            f"id (or none) in {data_bin}'s tokenizer, e.g. {moved[0]}")
    with torch.no_grad():
        for name, tensor in own.items():
            old = weights[name]
            tensor[: old.shape[0]].copy_(old.to(tensor.dtype))
    rows = {name: (weights[name].shape[0], own[name].shape[0]) for name in grown}
    return f"{directory} ({', '.join(f'{n}: rows {a} -> {b}' for n, (a, b) in rows.items()) or 'same shapes'})"

"""``imf train`` and ``imf validate``: the loops around :class:`~.trainer.Trainer`, as fairseq-train runs them.

Training is resumable to the update: a checkpoint records the epoch and the number of update groups
already consumed in it, and since the batch order is a function of (seed, epoch) and every update
reseeds with ``seed + num_updates``, a resumed run reproduces the loss curve of an uninterrupted one.

Several processes: under ``torchrun --nproc_per_node N -m instruct_museformer train ...`` (RANK/WORLD_SIZE/
LOCAL_RANK in the environment; ``-m`` because the ``imf`` launcher may be a shell shim) each process joins
the group; otherwise ``--distributed-world-size N`` (default: the visible GPUs) spawns N
processes. NCCL on CUDA, gloo on CPU. Ranks take disjoint slices of the batch list, so the effective
batch is batch size x world size x update-freq, as in fairseq.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ..data.batch import Batch
from ..data.views import SampleViews, sample_views
from ..errors import UserError
from ..files import write_text_atomic
from ..model.config import MuseformerConfig
from ..model.planning import LayoutPlanner
from .checkpoint import (
    CheckpointContents,
    capture_rng,
    load_checkpoint_model,
    load_finetune_weights,
    load_model_weights,
    load_training_state,
    prune_checkpoints,
    read_config,
    resolve_checkpoint,
    restore_rng,
    save_checkpoint,
)
from .feed import DataBinSource, DataSource, SplitData, batch_stream, detect_task, epoch_batches, groups_per_epoch
from .graphs import GraphBatches
from .objective import Objective, build_objective
from .options import args_to_json, model_config_from_args, task_kind
from .progress import ProgressLogger, perplexity, setup_logging
from .trainer import LN2, StepResult, Trainer, seed_everything

logger = logging.getLogger("imf.train")

# Model fields that may change when resuming (they change no parameter shape or meaning).
RUNTIME_MODEL_FIELDS = (
    "dropout", "attention_dropout", "attention_impl", "block_size", "gradient_checkpointing", "compile_blocks"
)

ModelFactory = Callable[[MuseformerConfig], torch.nn.Module]
SourceFactory = Callable[[argparse.Namespace, str], DataSource]
UpdateCallback = Callable[[int, StepResult], None]


@dataclass
class Hooks:
    """Seams for tests and embedding: how data and model are built, and a per-update callback."""

    source_factory: SourceFactory | None = None
    model_factory: ModelFactory | None = None
    on_update: Sequence[UpdateCallback] = field(default_factory=tuple)


def _default_source(args: argparse.Namespace, task: str) -> DataSource:
    return DataBinSource(
        Path(args.data), task=task, source_lang=args.source_lang, target_lang=args.target_lang,
        beat_mask_ts=args.beat_mask_ts, eob_token=getattr(args, "eob_token", None),
    )


def layout_planner(model: torch.nn.Module, device: torch.device, pad_plans: bool = False) -> LayoutPlanner | None:
    """The loader-side builder of the model's attention layouts (a Museformer model), else None; with
    ``pad_plans``, plans grown to bucketed capacities (for CUDA graphs)."""
    from ..model.museformer import MuseformerLM, MuseformerTranslation

    if not isinstance(model, (MuseformerLM, MuseformerTranslation)):
        return None
    return LayoutPlanner(model.cfg, device.type, pad_plans=pad_plans)


def _planner_prepare(model: torch.nn.Module, device: torch.device) -> Callable[[Batch], Batch] | None:
    planner = layout_planner(model, device)
    return None if planner is None else planner.prepare


def _default_model(cfg: MuseformerConfig) -> torch.nn.Module:
    from ..model.museformer import build_model

    return build_model(cfg)


def _resolve_task(args: argparse.Namespace, hooks: Hooks) -> str:
    """The task the data-bin holds; a conflicting --task name is reported, not obeyed blindly."""
    if hooks.source_factory is not None:
        return task_kind(args.task)
    found = detect_task(Path(args.data), args.source_lang, args.target_lang)
    named = task_kind(args.task)
    if found == "translation" and named == "language_modeling":
        logger.info(
            f"--task {args.task}: {args.data} is a translation data-bin ({args.source_lang} -> "
            f"{args.target_lang}); training the translation task (museformer_translation) instead"
        )
    elif found == "language_modeling" and named == "translation":
        logger.info(f"{args.data} holds language-model data ({{split}}.bin, no pairs): training "
                    "museformer_language_modeling")
    return found


# -- distributed set-up ------------------------------------------------------------------------------

@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device


def _use_cuda(args: argparse.Namespace) -> bool:
    return torch.cuda.is_available() and not args.cpu


def _init_distributed(args: argparse.Namespace) -> DistInfo:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(args.device_id)))
    cuda = _use_cuda(args)
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", init_method="env://", rank=rank, world_size=world)
    return DistInfo(rank, world, local_rank, device)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _spawned_worker(index: int, args: argparse.Namespace, world: int, port: int, hooks: Hooks) -> None:
    os.environ.update(
        {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(index), "LOCAL_RANK": str(index),
         "WORLD_SIZE": str(world)}
    )
    if "OMP_NUM_THREADS" not in os.environ:  # as torchrun does: N processes must not each take every core
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    _train_process(args, hooks)


def train(args: argparse.Namespace, hooks: Hooks | None = None, *, start_method: str = "spawn") -> int:
    """Run training as the flags say: in this process, or spawned over --distributed-world-size processes."""
    hooks = hooks or Hooks()
    under_torchrun = "WORLD_SIZE" in os.environ and "RANK" in os.environ
    world = args.distributed_world_size
    if world is None:
        world = torch.cuda.device_count() if _use_cuda(args) else 1
    world = max(1, world)
    if under_torchrun or world == 1:
        return _train_process(args, hooks)
    if hooks.source_factory is None:  # user mistakes fail here, in one line, not in N child tracebacks
        detect_task(Path(args.data), args.source_lang, args.target_lang)
    if _use_cuda(args) and world > torch.cuda.device_count():
        raise UserError(f"--distributed-world-size {world}: only {torch.cuda.device_count()} GPUs visible")
    import torch.multiprocessing as mp

    mp.start_processes(_spawned_worker, args=(args, world, _free_port(), hooks), nprocs=world, join=True,
                       start_method=start_method)
    return 0


# -- the training loop -------------------------------------------------------------------------------

class _Meter:
    """Sums for one logging window (an interval or an epoch)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.nll = 0.0
        self.ntokens = 0
        self.nsentences = 0
        self.updates = 0
        self.gnorm = 0.0
        self.start = time.perf_counter()

    def add(self, result: StepResult) -> None:
        self.nll += result.nll
        self.ntokens += result.ntokens
        self.nsentences += result.nsentences
        if not result.overflow:
            self.updates += 1
            self.gnorm += result.gnorm

    def stats(self, trainer: Trainer, train_wall: float, wall: float) -> dict[str, Any]:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        loss = self.nll / max(self.ntokens, 1) / LN2
        stats: dict[str, Any] = {
            "loss": loss,
            "ppl": perplexity(loss),
            "wps": self.ntokens / elapsed,
            "ups": self.updates / elapsed,
            "wpb": self.ntokens / max(self.updates, 1),
            "bsz": self.nsentences / max(self.updates, 1),
            "num_updates": trainer.num_updates,
            "lr": trainer.get_lr(),
            "gnorm": self.gnorm / max(self.updates, 1),
        }
        if trainer.scaler is not None:
            stats["loss_scale"] = trainer.scaler.scale
        stats["train_wall"] = train_wall
        stats["wall"] = wall
        return stats


def _truncation(args: argparse.Namespace, split: str) -> int | None:
    for name in ("train", "valid", "test"):
        if split.startswith(name):
            return getattr(args, f"truncate_{name}", None)
    return None


def _restore_path(args: argparse.Namespace) -> Path:
    path = Path(args.restore_file)
    if path.name == str(path) and not path.is_absolute():  # a bare name lives in --save-dir, as in fairseq
        path = Path(args.save_dir) / path
    return path


def _train_process(args: argparse.Namespace, hooks: Hooks) -> int:
    info = _init_distributed(args)
    setup_logging(info.rank)
    try:
        return _train_loop(args, hooks, info)
    finally:
        if info.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _vocabulary_tokens(data_bin: Path | None) -> list[str] | None:
    """Token names of the data-bin's MidiTok tokenizer (``tokenizer.json``), None where it has none."""
    if data_bin is None or not (Path(data_bin) / "tokenizer.json").is_file():
        return None
    from ..tokens.tokenizer import load_tokenizer, vocab_tokens

    try:
        return vocab_tokens(load_tokenizer(Path(data_bin) / "tokenizer.json"))
    except UserError:
        return None


def _sample_views(flags: Mapping[str, Any], source: DataSource) -> SampleViews:
    """The markings carried into chunks and the mark-relative tempo that ``flags`` (this run's or a checkpoint's
    arguments) ask for (``data.views``); the tokenizer is read only when they ask for one."""
    if not (flags.get("carry_markings") or flags.get("tempo_relative_to_mark")):
        return SampleViews()
    return sample_views(flags, _vocabulary_tokens(getattr(source, "data_bin", None)), source.vocab_size)


def _expressive_levers(args: argparse.Namespace, source: DataSource) -> tuple[Objective | None, Any, Any, Any]:
    """The training objective, the token augmentation, the history noise and the self-feed the flags ask for
    (docs/model.md, levers)."""
    from ..data.augment import TokenAugmentation
    from ..data.history_noise import HistoryNoise
    from .self_feed import SelfFeed

    shifts = {name: int(getattr(args, f"augment_{name}", 0) or 0) for name in ("transpose", "tempo", "velocity")}
    noise = float(getattr(args, "history_noise", 0.0) or 0.0)
    noise_bins = int(getattr(args, "history_noise_bins", 2))
    self_feed = float(getattr(args, "self_feed", 0.0) or 0.0)
    wanted = (getattr(args, "ordinal_smoothing", 0) or getattr(args, "class_loss_weights", None)
              or any(shifts.values()) or noise or self_feed)
    tokens = _vocabulary_tokens(getattr(source, "data_bin", None)) if wanted else None
    objective = build_objective(args, tokens, source.vocab_size)
    augment = history_noise = None
    if any(shifts.values()):
        if tokens is None:
            raise UserError("--augment-*: needs token names, from a tokenizer.json in the data-bin")
        if min(shifts.values()) < 0:
            raise UserError("--augment-transpose/--augment-tempo/--augment-velocity: must be >= 0")
        augment = TokenAugmentation.build(tokens, source.vocab_size, seed=args.seed, **shifts)
        logger.info(f"augmentation: transpose +-{shifts['transpose']}, tempo +-{shifts['tempo']} bins, "
                    f"velocity +-{shifts['velocity']} bins")
    if noise:
        if tokens is None:
            raise UserError("--history-noise: needs token names, from a tokenizer.json in the data-bin")
        history_noise = HistoryNoise.build(tokens, source.vocab_size, probability=noise, bins=noise_bins,
                                           seed=args.seed)
        logger.info(f"history noise: {noise:.0%} of the decoder input's Tempo/Velocity/Duration tokens moved by "
                    f"up to {noise_bins} bins")
    feeder = None
    if self_feed:
        if tokens is None:
            raise UserError("--self-feed: needs token names, from a tokenizer.json in the data-bin")
        feeder = SelfFeed.build(tokens, source.vocab_size, probability=self_feed)
        logger.info(f"self-feed: {self_feed:.0%} of the decoder input's Tempo/Velocity tokens are the model's own "
                    "expected bins")
    if objective is not None:
        logger.info(f"objective: ordinal smoothing {args.ordinal_smoothing} bins, class weights "
                    f"{args.class_loss_weights or 'none'}")
    return objective, augment, history_noise, feeder


def _train_loop(args: argparse.Namespace, hooks: Hooks, info: DistInfo) -> int:
    run = _TrainingRun(args, hooks, info)
    run.restore()
    run.load_splits()
    previous = run.stop_on_signals()
    try:
        run.train()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    logger.info(f"done training in {time.perf_counter() - run.wall_start:.1f} seconds")
    return 0


class _TrainingRun:
    """One ``imf train`` process: model, trainer and data, where training stands (epoch, update group in it,
    best validation loss, wall clocks), and the epoch loop with its logging, validation and checkpoints."""

    def __init__(self, args: argparse.Namespace, hooks: Hooks, info: DistInfo) -> None:
        self.wall_start = time.perf_counter()
        self.args, self.hooks, self.info = args, hooks, info
        if args.user_dir:
            logger.info(f"--user-dir {args.user_dir}: not needed (Museformer is built in); ignored")
        if args.take_bos_as_bar:
            logger.info("--take-bos-as-bar True: the leading EOS is always a clean 1-token prefix here (BOS-leak fix)")
        task = _resolve_task(args, hooks)
        self.source = (hooks.source_factory or _default_source)(args, task)
        seed_everything(args.seed)
        self.cfg = model_config_from_args(args, vocab_size=self.source.vocab_size, task=task)
        model = (hooks.model_factory or _default_model)(self.cfg)
        if args.fp16 and info.device.type == "cpu":
            logger.info("--fp16 on CPU: computing in float32; the dynamic loss scaler still runs (loss_scale is "
                        "logged)")
        logger.info(f"task: {task} ({args.source_lang} -> {args.target_lang}), arch: {args.arch}, device: "
                    f"{info.device}, world size: {info.world_size}")
        logger.info(f"model config: {json.dumps(self.cfg.to_dict(), sort_keys=True)}")
        num_params = sum(p.numel() for p in model.parameters())
        num_trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
        logger.info(f"num. model params: {num_params} (num. trained: {num_trained})")
        graphs = args.cuda_graphs and info.device.type == "cuda"
        if args.cuda_graphs and not graphs:
            logger.info("--cuda-graphs: not on a GPU; steps run eagerly")
        planner = layout_planner(model, info.device, pad_plans=graphs)
        # what the loader's workers do to each batch: its layouts; for graphs also a bucketed length
        self.prepare = GraphBatches(planner) if graphs else planner.prepare if planner is not None else None
        objective, self.augment, self.history_noise, self_feed = _expressive_levers(args, self.source)
        self.trainer = Trainer(args, model, device=info.device, rank=info.rank, world_size=info.world_size,
                               planner=planner, objective=objective, self_feed=self_feed)
        logger.info(
            f"training on {info.world_size} devices; batch size per device = {args.batch_size}, max tokens per "
            f"device = {args.max_tokens}, update freq = {args.update_freq}"
        )
        self.epoch, self.position, self.best_loss = 1, 0, None
        self.train_wall_offset, self.wall_offset, self.train_time = 0.0, 0.0, 0.0
        self.stop_signal: int | None = None

    def stop_on_signals(self) -> dict[int, Any]:
        """SIGTERM or SIGINT (a job's time limit, `timeout`, Ctrl-C) ends training after the current update with
        a checkpoint, so that a time-boxed run resumes where it stopped instead of at its last interval save."""
        if threading.current_thread() is not threading.main_thread():
            return {}

        def request_stop(signum: int, _frame: Any) -> None:
            if self.stop_signal is not None:  # a second signal: stop now
                raise KeyboardInterrupt
            self.stop_signal = signum
            logger.info(f"{signal.Signals(signum).name}: stopping after this update with a checkpoint")

        previous = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
        for signum in previous:
            signal.signal(signum, request_stop)
        return previous

    def stop_requested(self) -> bool:
        """Whether any rank was signalled (all ranks must stop at the same update)."""
        flag = self.stop_signal is not None
        if self.info.world_size == 1:
            return flag
        t = torch.tensor([float(flag)], device=self.info.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def restore(self) -> None:
        """Continue from ``--restore-file`` (default checkpoint_last) when it exists: weights, optimizer,
        schedule, RNG, and where in which epoch training stood."""
        args, info, trainer = self.args, self.info, self.trainer
        restore = _restore_path(args)
        try:
            restore_dir: Path | None = resolve_checkpoint(restore)
        except UserError:
            restore_dir = None
            if args.restore_file != "checkpoint_last":
                raise
        if restore_dir is None:
            logger.info(f"no existing checkpoint found {restore}")
            if args.finetune_from_model:
                loaded = load_finetune_weights(trainer.model, Path(args.finetune_from_model), self.source.data_bin)
                logger.info(f"--finetune-from-model: starting from the weights of {loaded}")
            return
        if args.finetune_from_model:
            logger.info(f"--finetune-from-model ignored: resuming from {restore_dir}")
        state, opt_tensors, rng_tensors = load_training_state(restore_dir)
        saved_cfg = read_config(restore_dir)["model"]
        changed = sorted(k for k, v in self.cfg.to_dict().items() if saved_cfg.get(k) != v)
        fixed = [k for k in changed if k not in RUNTIME_MODEL_FIELDS]
        if fixed:
            raise UserError(f"{restore_dir}: model flags differ from the checkpoint's ({', '.join(fixed)}); "
                            "use another --save-dir or --restore-file for a different model")
        if changed:
            logger.info(f"changed since the checkpoint (allowed): {', '.join(changed)}")
        load_model_weights(trainer.model, restore_dir)
        trainer.load_state(state, opt_tensors, reset_optimizer=args.reset_optimizer,
                           reset_lr_scheduler=args.reset_lr_scheduler)
        if not args.reset_dataloader:
            self.epoch, self.position = int(state["epoch"]), int(state["iterations_in_epoch"])
            restore_rng(rng_tensors, state.get("rng", {}))
            per_update_then = int(state.get("world_size", 1)) * int(state.get("update_freq", 1))
            per_update_now = info.world_size * args.update_freq
            if per_update_then != per_update_now and self.position:
                # the batch list of an epoch does not depend on them: continue after the batches consumed
                self.position = self.position * per_update_then // per_update_now
                logger.warning(f"world size x update freq changed ({per_update_then} -> {per_update_now}): "
                               f"continuing epoch {self.epoch} at update group {self.position}")
        self.best_loss = state.get("best_loss")
        if not args.reset_meters:
            meters = state.get("meters", {})
            self.train_wall_offset = float(meters.get("train_wall", 0.0))
            self.wall_offset = float(meters.get("wall", 0.0))
        logger.info(f"loaded checkpoint {restore_dir} (epoch {self.epoch} @ {trainer.num_updates} updates)")

    def load_splits(self) -> None:
        args = self.args
        self.progress = ProgressLogger(args.log_format, args.tensorboard_logdir, enabled=self.info.rank == 0,
                                       no_progress_bar=args.no_progress_bar)
        views = _sample_views(vars(args), self.source)
        self.train_split = self.source.load(args.train_subset, args.truncate_train, chunk=args.chunk_train,
                                            carry=views.carry, relative=views.relative)
        if views.carry is not None:
            logger.info("carried markings: every chunk after a piece's first starts with the metronome mark, "
                        "tempo word and dynamic in force")
        if views.relative is not None:
            logger.info("tempo relative to the mark: Tempo tokens moved so that the mark in force is the reference bin")
        self.valid_names = [] if args.disable_validation else [s for s in args.valid_subset.split(",") if s]
        # loaded now, as fairseq does, so that a missing split fails before hours of training
        self.valid_splits: dict[str, SplitData] = {
            name: self.source.load(name, _truncation(args, name), relative=views.relative) for name in self.valid_names
        }

    def walls(self) -> tuple[float, float]:
        return (self.train_wall_offset + self.train_time,
                self.wall_offset + time.perf_counter() - self.wall_start)

    def validate(self) -> float | None:
        """Loss of every validation subset (logged); returns the first one's, which selects checkpoint_best."""
        first_loss = None
        for name in self.valid_names:
            loss, stats = _evaluate(self.args, self.source, self.valid_splits[name], self.trainer, self.info)
            stats["num_updates"] = self.trainer.num_updates
            if first_loss is None:
                first_loss = loss
                stats["best_loss"] = loss if self.best_loss is None else min(self.best_loss, loss)
            self.progress.log_summary(stats, tag="valid", epoch=self.epoch, step=self.trainer.num_updates,
                                      prefix=f"valid on '{name}' subset")
        return first_loss

    def save(self, end_of_epoch: bool, val_loss: float | None) -> None:
        args, trainer, epoch = self.args, self.trainer, self.epoch
        is_best = val_loss is not None and (self.best_loss is None or val_loss <= self.best_loss)
        if val_loss is not None:
            self.best_loss = val_loss if self.best_loss is None else min(self.best_loss, val_loss)
        if args.no_save or self.info.rank != 0:
            return
        n = trainer.num_updates
        names: list[str] = []
        if not args.no_last_checkpoints:
            names.append("checkpoint_last")
        if end_of_epoch and not args.no_epoch_checkpoints and epoch % args.save_interval == 0:
            names.append(f"checkpoint{epoch}")
        if not end_of_epoch and args.save_interval_updates > 0 and n % args.save_interval_updates == 0:
            names.append(f"checkpoint_{epoch}_{n}")
        if is_best:
            names.append("checkpoint_best")
        if not names:
            return
        tstate, opt_tensors = trainer.state()
        rng_tensors, rng_py = capture_rng()
        train_wall, wall = self.walls()
        tstate.update({
            "epoch": epoch, "iterations_in_epoch": self.position, "best_loss": self.best_loss, "rng": rng_py,
            "meters": {"train_wall": train_wall, "wall": wall}, "world_size": self.info.world_size,
            "update_freq": args.update_freq,
        })
        start = time.perf_counter()
        contents = CheckpointContents(
            model=trainer.model, cfg=self.cfg, args=args_to_json(args), trainer_state=tstate,
            optimizer_tensors=opt_tensors, rng_tensors=rng_tensors, data_bin=self.source.data_bin,
            langs=self.source.langs,
        )
        written = save_checkpoint(Path(args.save_dir), names, contents)
        prune_checkpoints(Path(args.save_dir), args.keep_interval_updates, args.keep_last_epochs)
        logger.info(
            f"saved checkpoint {written[0]} (epoch {epoch} @ {n} updates, score {val_loss}) "
            f"(writing took {time.perf_counter() - start:.2f} seconds)"
        )

    def train(self) -> None:
        """Epochs until --max-update or --max-epoch."""
        args = self.args
        max_update = args.max_update if args.max_update > 0 else math.inf
        max_epoch = args.max_epoch if args.max_epoch > 0 else math.inf
        stop = self.trainer.num_updates >= max_update
        while not stop and self.epoch <= max_epoch:
            batches = epoch_batches(
                self.source, self.train_split, max_positions=args.tokens_per_sample, batch_size=args.batch_size,
                max_tokens=args.max_tokens, seed=args.seed, epoch=self.epoch, shuffle=True, skip_invalid=True,
            )
            if not batches:
                raise UserError(f"split '{args.train_subset}' of {args.data}: no sample fits --tokens-per-sample "
                                f"{args.tokens_per_sample}")
            total = groups_per_epoch(len(batches), self.info.world_size, args.update_freq)
            if self.position >= total:
                self.epoch, self.position = self.epoch + 1, 0
                continue
            stop = self._epoch(batches, total, max_update)
        self.progress.close()

    def _epoch(self, batches: list[list[int]], total: int, max_update: float) -> bool:
        """The rest of this epoch's update groups (or up to the last update); returns whether to stop."""
        args, info, trainer = self.args, self.info, self.trainer
        logger.info(f"begin training epoch {self.epoch}")
        augment = None if self.augment is None else self.augment.for_epoch(self.epoch)
        noise = None if self.history_noise is None else self.history_noise.for_epoch(self.epoch)
        stream = batch_stream(self.train_split, batches, rank=info.rank, world_size=info.world_size,
                              start=self.position * args.update_freq, num_workers=args.num_workers,
                              prepare=self.prepare, augment=augment, history_noise=noise)
        interval, epoch_meter = _Meter(), _Meter()
        self.progress.start_epoch(self.epoch, total, self.position)
        group: list[tuple[bool, Batch]] = []
        iterator = iter(stream)
        stop = False
        while self.position < total:
            group.clear()
            for _ in range(args.update_freq):
                item = next(iterator, None)
                if item is None:
                    break
                group.append(item)
            step_start = time.perf_counter()
            result = trainer.train_step(group)
            self.train_time += time.perf_counter() - step_start
            self.position += 1
            interval.add(result)
            epoch_meter.add(result)
            self.progress.advance()
            stop = trainer.num_updates >= max_update or self.stop_requested()
            self._after_update(result, interval, total, stop=stop)
            if stop:
                break
        self.progress.end_epoch()
        if trainer.graphs is not None:
            g = trainer.graphs
            logger.info(f"CUDA graphs: {g.recorded} recorded ({len(g)} kept), {g.replays} steps replayed, "
                        f"{g.eager} run eagerly")
        del iterator, stream
        if self.position >= total:
            self.progress.log_summary(epoch_meter.stats(trainer, *self.walls()), tag="train", epoch=self.epoch,
                                      step=trainer.num_updates)
            self.epoch, self.position = self.epoch + 1, 0
        return stop

    def _after_update(self, result: StepResult, interval: _Meter, total: int, *, stop: bool) -> None:
        """Callbacks, logging, and the validation and checkpoints that fall due after one update."""
        args, trainer = self.args, self.trainer
        end_of_epoch = self.position >= total
        if result.overflow:
            logger.info(f"NOTE: gradient overflow detected, ignoring gradient, setting loss scale to: "
                        f"{trainer.scaler.scale if trainer.scaler else None}")
        for callback in self.hooks.on_update:
            callback(trainer.num_updates, result)
        n = trainer.num_updates
        if not result.overflow and args.log_interval > 0 and n % args.log_interval == 0:
            self.progress.log_inner(interval.stats(trainer, *self.walls()), epoch=self.epoch,
                                    position=self.position, total=total, step=n)
            interval.reset()
        updated = not result.overflow
        save_due = (
            (end_of_epoch and self.epoch % args.save_interval == 0)
            or stop
            or (updated and args.save_interval_updates > 0 and n > 0 and n % args.save_interval_updates == 0)
        )
        validate_due = (
            (not end_of_epoch and save_due)
            or (end_of_epoch and self.epoch % args.validate_interval == 0)
            or stop
            or (updated and args.validate_interval_updates > 0 and n % args.validate_interval_updates == 0)
        )
        val_loss = self.validate() if validate_due else None
        if save_due:
            self.save(end_of_epoch, val_loss)
        elif val_loss is not None:
            self.best_loss = val_loss if self.best_loss is None else min(self.best_loss, val_loss)


# -- validation ----------------------------------------------------------------------------------------

VALID_PROGRESS_SECONDS = 30.0


def _evaluate(args: argparse.Namespace, source: DataSource, split: SplitData, trainer: Trainer,
              info: DistInfo) -> tuple[float, dict[str, Any]]:
    """Token-weighted loss (base 2) of a split, its batches sharded over ranks and the sums all-reduced."""
    batch_size = getattr(args, "batch_size_valid", None) or args.batch_size
    max_tokens = getattr(args, "max_tokens_valid", None) or args.max_tokens
    batches = epoch_batches(
        source, split, max_positions=args.tokens_per_sample, batch_size=batch_size, max_tokens=max_tokens,
        seed=args.seed, epoch=1, shuffle=False, skip_invalid=args.skip_invalid_size_inputs_valid_test,
    )
    start = time.perf_counter()
    nll, ntokens, nsentences = 0.0, 0, 0
    stream = batch_stream(split, batches, rank=info.rank, world_size=info.world_size, start=0,
                          num_workers=args.num_workers, prepare=_planner_prepare(trainer.model, info.device))
    last_report = start
    for done, (dummy, batch) in enumerate(stream, start=1):
        if dummy:
            continue
        b_nll, b_tokens, b_sent = trainer.valid_step(batch)
        nll, ntokens, nsentences = nll + b_nll, ntokens + b_tokens, nsentences + b_sent
        now = time.perf_counter()
        if info.rank == 0 and now - last_report >= VALID_PROGRESS_SECONDS:  # a long subset on a CPU takes hours
            logger.info(f"valid on '{split.name}': {done} of {len(batches)} batches, {ntokens} target tokens, "
                        f"{now - start:.0f} s")
            last_report = now
    nll, ntokens_f, nsentences_f = trainer.reduce([nll, ntokens, nsentences])
    elapsed = max(time.perf_counter() - start, 1e-9)
    loss = nll / max(ntokens_f, 1) / LN2
    stats = {"loss": loss, "ppl": perplexity(loss), "wps": ntokens_f / elapsed,
             "wpb": ntokens_f / max(len(batches), 1), "bsz": nsentences_f / max(len(batches), 1)}
    return loss, stats


# Data flags that fairseq-validate takes from the checkpoint unless the command line sets them.
INHERITED_DATA_FLAGS = ("source_lang", "target_lang", "beat_mask_ts", "take_bos_as_bar", "tokens_per_sample",
                        "truncate_train", "truncate_valid", "truncate_test", "eob_token")


def _inherit_data_flags(args: argparse.Namespace, saved: dict[str, Any]) -> None:
    explicit = getattr(args, "_explicit", set())
    inherited = []
    for key in INHERITED_DATA_FLAGS:
        if key not in explicit and key in saved and saved[key] != getattr(args, key):
            setattr(args, key, saved[key])
            inherited.append(f"--{key.replace('_', '-')} {saved[key]}")
    if inherited:
        logger.info(f"from the checkpoint's training flags: {', '.join(inherited)}")


def _set_attention_impl(model: torch.nn.Module, impl: str) -> None:
    """Switch every attention module (and the configs they read at forward time) to ``impl``."""
    for module in model.modules():
        if hasattr(module, "impl"):
            module.impl = impl
        if hasattr(module, "cfg"):
            module.cfg.attention_impl = impl


def validate(args: argparse.Namespace) -> int:
    """fairseq-validate: loss (base 2) and ppl of ``--path`` on each ``--valid-subset``."""
    info = _init_distributed(args)
    setup_logging(info.rank)
    try:
        if args.user_dir:
            logger.info(f"--user-dir {args.user_dir}: not needed (Museformer is built in); ignored")
        model, cfg, metadata = load_checkpoint_model(Path(args.path))
        if args.attention_impl is not None:
            _set_attention_impl(model, args.attention_impl)
        _inherit_data_flags(args, metadata.get("args") or {})
        found = detect_task(Path(args.data), args.source_lang, args.target_lang)
        if found != cfg.task:
            raise UserError(f"{args.path}: a {cfg.task} model, but {args.data} holds {found} data")
        source = _default_source(args, found)
        if source.vocab_size != cfg.vocab_size:
            raise UserError(f"{args.path}: vocabulary of {cfg.vocab_size} tokens, but {args.data}'s dictionary has "
                            f"{source.vocab_size}")
        logger.info(f"loaded checkpoint {metadata['path']} ({metadata.get('num_updates', 0)} updates)")
        train_args = argparse.Namespace(**vars(args))
        for key, default in (("lr", 0.0), ("adam_betas", (0.9, 0.999)), ("adam_eps", 1e-8), ("weight_decay", 0.0),
                             ("lr_scheduler", "fixed"), ("warmup_updates", 0), ("warmup_init_lr", -1.0),
                             ("ddp_backend", "no_c10d"), ("find_unused_parameters", False), ("update_freq", 1),
                             ("clip_norm", 0.0)):
            setattr(train_args, key, getattr(args, key, default))
        train_args.fp16 = False  # evaluation: autocast only, no loss scaling
        trainer = Trainer(train_args, model, device=info.device, rank=info.rank, world_size=info.world_size)
        trainer.autocast_dtype = (torch.bfloat16 if args.bf16 else
                                  torch.float16 if args.fp16 and info.device.type == "cuda" else None)
        progress = ProgressLogger("simple", None, enabled=info.rank == 0)
        results: dict[str, Any] = {"checkpoint": str(metadata["path"]), "num_updates": metadata.get("num_updates", 0),
                                   "loss_unit": "bits per target token", "subsets": {}}
        views = _sample_views(metadata.get("args") or {}, source)
        for name in [s for s in args.valid_subset.split(",") if s]:
            split = source.load(name, _truncation(args, name), relative=views.relative)
            _, stats = _evaluate(args, source, split, trainer, info)
            progress.log_summary(stats, tag="valid", epoch=None, step=0, prefix=f"valid on '{name}' subset")
            results["subsets"][name] = {"loss": stats["loss"], "ppl": stats["ppl"], "truncate": _truncation(args, name),
                                        "samples": len(split.dataset)}
        if args.results_json is not None and info.rank == 0:
            write_text_atomic(args.results_json, json.dumps(results, indent=2) + "\n")
        return 0
    finally:
        if info.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()

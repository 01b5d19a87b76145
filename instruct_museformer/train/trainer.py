"""One optimisation step as fairseq's Trainer takes it, and the state a checkpoint must carry.

Per update: reseed with ``seed + num_updates`` (fairseq's trick that makes dropout reproducible across a
resume), run the ``--update-freq`` batches of this rank (gradient sync only on the last one), sum the
NLL in nats, then normalise the summed gradients by the *global* number of target tokens (fairseq's
``sample_size`` = ntokens, all-reduced over ranks) and by the loss scale, measure the gradient norm,
and either step (Adam, then the lr for the next update) or -- on an fp16 overflow -- skip the step
and halve the scale. The loss is reported in base 2.
"""

from __future__ import annotations

import argparse
import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..data.batch import Batch
from ..errors import UserError
from ..model import gathered, indexed
from ..model.planning import LayoutPlanner
from ..tokens.specials import PAD
from .graphs import StepGraphs
from .objective import Objective
from .optim import (
    DynamicLossScaler,
    FairseqAdam,
    FixedSchedule,
    InverseSqrtSchedule,
    default_scale_window,
    grad_norm_and_clip,
)
from .self_feed import SelfFeed

LN2 = math.log(2.0)


def batch_nll(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Summed next-token NLL in nats over non-pad targets (fairseq's cross_entropy, reduce=True)."""
    return F.cross_entropy(
        logits.float().reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=PAD, reduction="sum"
    )


@dataclass
class StepResult:
    """What one update reports (sums over all ranks)."""

    nll: float  # nats, summed over target tokens
    ntokens: int
    nsentences: int
    gnorm: float
    overflow: bool
    lr: float  # the rate this update used
    loss_scale: float | None

    @property
    def loss(self) -> float:
        """Token-mean loss in base 2."""
        return self.nll / max(self.ntokens, 1) / LN2


def _all_reduce_sum(values: Sequence[float], device: torch.device, world_size: int) -> list[float]:
    if world_size == 1:
        return list(values)
    tensor = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


class Trainer:
    """Model, optimizer, schedule and loss scaler of one rank."""

    def __init__(
        self,
        args: argparse.Namespace,
        model: torch.nn.Module,
        *,
        device: torch.device,
        rank: int = 0,
        world_size: int = 1,
        planner: LayoutPlanner | None = None,
        objective: Objective | None = None,
        self_feed: SelfFeed | None = None,
    ) -> None:
        self.args = args
        self.objective = None if objective is None else objective.to(device)
        self.self_feed = None if self_feed is None else self_feed.to(device)
        self.device = device
        self.rank, self.world_size = rank, world_size
        self.model = model.to(device)
        self.legacy_ddp = args.ddp_backend in ("no_c10d", "legacy_ddp")
        if world_size > 1 and not self.legacy_ddp:
            ids = [device.index] if device.type == "cuda" else None
            self.wrapped: torch.nn.Module = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=ids, find_unused_parameters=args.find_unused_parameters
            )
        else:
            if world_size > 1:  # legacy: identical start weights, gradients all-reduced by hand
                for tensor in self.model.state_dict().values():
                    dist.broadcast(tensor, 0)
            self.wrapped = self.model
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.param_names = {p: n for n, p in self.model.named_parameters() if p.requires_grad}
        self.optimizer = FairseqAdam(
            self.params, lr=args.lr, betas=tuple(args.adam_betas), eps=args.adam_eps, weight_decay=args.weight_decay
        )
        if args.lr_scheduler == "inverse_sqrt":
            self.schedule: InverseSqrtSchedule | FixedSchedule = InverseSqrtSchedule(
                args.lr, args.warmup_updates, args.warmup_init_lr
            )
        else:
            self.schedule = FixedSchedule(args.lr, max(args.warmup_updates, 0))
        self.scaler: DynamicLossScaler | None = None
        if args.fp16:
            window = args.fp16_scale_window or default_scale_window(world_size, args.update_freq)
            self.scaler = DynamicLossScaler(
                init_scale=args.fp16_init_scale, scale_window=window, tolerance=args.fp16_scale_tolerance,
                threshold=args.threshold_loss_scale, min_scale=args.min_loss_scale,
            )
        self.autocast_dtype: torch.dtype | None = None
        if args.bf16:
            self.autocast_dtype = torch.bfloat16
        elif args.fp16 and device.type == "cuda":
            self.autocast_dtype = torch.float16
        self.num_updates = 0
        self.set_num_updates(0)
        self.graphs = self._step_graphs(planner) if getattr(args, "cuda_graphs", False) else None

    def _step_graphs(self, planner: LayoutPlanner | None) -> StepGraphs | None:
        """``--cuda-graphs``: each batch's forward and backward replayed from a CUDA graph (``graphs``)."""
        args, cfg = self.args, getattr(self.model, "cfg", None)
        if self.device.type != "cuda":
            return None
        if self.autocast_dtype is None:
            raise UserError("--cuda-graphs needs --bf16 or --fp16 (the gather path's kernels run in half precision)")
        if self.world_size > 1 and not self.legacy_ddp:
            raise UserError("--cuda-graphs with several processes needs --ddp-backend legacy_ddp (gradients are "
                            "all-reduced after the graphed backward)")
        if cfg is not None and cfg.gradient_checkpointing:
            raise UserError("--cuda-graphs and --gradient-checkpointing do not go together")
        head_dim = cfg.attention_embed_dim // cfg.num_attention_heads if cfg is not None else 64
        if not indexed.supports_head_dim(head_dim) or gathered.KERNEL not in ("auto", "indexed"):
            # FlashAttention on gathered chunks plans its chunks on the host during the forward, which a graph
            # cannot replay; the indexed kernels read everything from the device (their dropout seed too)
            raise UserError(f"--cuda-graphs needs the indexed attention kernels: a head size of 16-256, a power "
                            f"of two (got {head_dim})")
        self._loss_weight = torch.ones((), device=self.device)  # the loss scale, or 0 for a dummy batch
        return StepGraphs(self._graph_step, self.device, planner, max_graphs=args.cuda_graphs_max)

    def _graph_step(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """What the graphs record: the forward and NLL, then the backward of the weighted NLL (gradients
        added into ``.grad``); the NLL is what the update reports."""
        with self._autocast(cache=False):  # a weight cast made outside a recording must not be reused inside
            logits = self.model(self._self_fed(batch))
        loss, nll = self._loss(logits, batch.target)
        return loss * self._loss_weight, nll.detach()

    def _loss(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(what the gradient follows, the NLL reported), summed in nats; the same unless an objective is set."""
        if self.objective is None:
            nll = batch_nll(logits, target)
            return nll, nll
        return self.objective(logits, target)

    def _self_fed(self, batch: Batch) -> Batch:
        """``batch`` with the model's own expected bins in its history (``--self-feed``), else ``batch``; inside
        autocast."""
        if self.self_feed is None:
            return batch
        with torch.no_grad():
            first = self.model(batch)
        return self.self_feed.feed(batch, first)

    # -- schedule ------------------------------------------------------------------------------------
    def set_num_updates(self, num_updates: int) -> None:
        self.num_updates = num_updates
        self.optimizer.set_lr(self.schedule.lr_at(num_updates))

    def get_lr(self) -> float:
        return self.optimizer.get_lr()

    def _autocast(self, cache: bool = True) -> contextlib.AbstractContextManager[Any]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype, cache_enabled=cache)

    def _seed(self) -> None:
        seed = self.args.seed + self.num_updates
        torch.manual_seed(seed)
        if self.device.type == "cuda":
            torch.cuda.manual_seed(seed)

    # -- steps ---------------------------------------------------------------------------------------
    def train_step(self, group: Sequence[tuple[bool, Batch]]) -> StepResult:
        """One update over this rank's ``group`` of (is_dummy, batch); returns global sums."""
        self._seed()
        self.wrapped.train()
        self._zero_grad()
        scale = self.scaler.scale if self.scaler is not None else 1.0
        nll_sum, ntokens, nsentences = 0.0, 0, 0
        for i, (dummy, batch) in enumerate(group):
            if self.graphs is not None:
                self._loss_weight.fill_(0.0 if dummy else scale)
                nll = self.graphs(batch)
                if not dummy:
                    nll_sum += float(nll)
                    ntokens += int(batch.ntokens)
                    nsentences += int(batch.target.size(0))
                continue
            batch = batch.to(self.device)
            last = i == len(group) - 1
            sync = contextlib.nullcontext()
            if not last and isinstance(self.wrapped, torch.nn.parallel.DistributedDataParallel):
                sync = self.wrapped.no_sync()
            with sync:
                with self._autocast():
                    logits = self.wrapped(self._self_fed(batch))
                loss, nll = self._loss(logits, batch.target)
                if dummy:
                    loss, nll = loss * 0.0, nll * 0.0
                (loss * scale).backward()
            if not dummy:
                nll_sum += float(nll.detach())
                ntokens += int(batch.ntokens)
                nsentences += int(batch.target.size(0))
        nll_sum, ntokens_f, nsentences_f = _all_reduce_sum([nll_sum, ntokens, nsentences], self.device,
                                                           self.world_size)
        ntokens, nsentences = int(ntokens_f), int(nsentences_f)
        if self.legacy_ddp and self.world_size > 1:
            for p in self.params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                dist.all_reduce(p.grad)
        # DDP averaged the gradients over ranks; fairseq wants sum / global sample_size.
        factor = (1.0 if self.legacy_ddp else float(self.world_size)) / (max(ntokens, 1) * scale)
        for p in self.params:
            if p.grad is not None:
                p.grad.mul_(factor)
        gnorm = float(grad_norm_and_clip(self.params, self.args.clip_norm))
        lr = self.get_lr()
        overflow = DynamicLossScaler.has_overflow(gnorm)
        if overflow and self.scaler is None:
            raise FloatingPointError(f"gradients are NaN/Inf at update {self.num_updates + 1} (loss {nll_sum})")
        if self.scaler is not None:
            self.scaler.update(overflow)
        if overflow:
            self._zero_grad()
        else:
            self.optimizer.step()
            self.set_num_updates(self.num_updates + 1)
        return StepResult(nll_sum, ntokens, nsentences, gnorm, overflow, lr,
                          None if self.scaler is None else self.scaler.scale)

    def _zero_grad(self) -> None:
        """Gradients to None -- or, where CUDA graphs add into them, to zero in place."""
        self.optimizer.zero_grad(set_to_none=self.graphs is None)

    @torch.no_grad()
    def valid_step(self, batch: Batch) -> tuple[float, int, int]:
        """(summed NLL in nats, target tokens, sentences) of one batch, in eval mode on this rank."""
        self.model.eval()
        batch = batch.to(self.device)
        with self._autocast():
            logits = self.model(batch)
        return float(batch_nll(logits, batch.target)), int(batch.ntokens), int(batch.target.size(0))

    def reduce(self, values: Sequence[float]) -> list[float]:
        return _all_reduce_sum(values, self.device, self.world_size)

    # -- checkpoint state --------------------------------------------------------------------------------
    def state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """(JSON-able trainer state, optimizer tensors)."""
        tensors, steps = self.optimizer.state_tensors(self.param_names)
        state = {
            "num_updates": self.num_updates,
            "optimizer": {"name": "adam", "steps": steps, "lr": self.get_lr()},
            "lr_scheduler": {"name": self.args.lr_scheduler, "num_updates": self.num_updates},
            "loss_scaler": None if self.scaler is None else self.scaler.state_dict(),
        }
        return state, tensors

    def load_state(self, state: dict[str, Any], tensors: dict[str, torch.Tensor], *, reset_optimizer: bool,
                   reset_lr_scheduler: bool) -> None:
        if not reset_optimizer:
            by_name = {n: p for p, n in self.param_names.items()}
            missing = sorted(set(state["optimizer"]["steps"]) - set(by_name))
            if missing:
                raise ValueError(f"optimizer state for unknown parameters: {missing[:3]}")
            self.optimizer.load_state_tensors(tensors, state["optimizer"]["steps"], by_name)
            if self.scaler is not None and state.get("loss_scaler"):
                self.scaler.load_state_dict(state["loss_scaler"])
        # inverse_sqrt is a pure function of num_updates (fairseq's too), so --reset-lr-scheduler has
        # nothing to reset beyond what num_updates implies.
        del reset_lr_scheduler
        self.set_num_updates(int(state["num_updates"]))


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and random at start-up (model initialisation uses torch's RNG)."""
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)

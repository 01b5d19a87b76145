"""Each forward's attention layouts and gather plans, built on the host and moved to the model's device.

The layouts (who reads whom, per layer) and the gather plans (which keys each bar's queries read) depend on
the batch's bar structure only, and cost a few milliseconds of host work per forward (4.8 ms at 15,360
tokens, 8.8 ms at 65,536 on the H100 host). The encoder and decoder build them themselves when a batch
comes without; in training, the data loader's workers build them instead (``LayoutPlanner``, attached to
the batch as ``Batch.layouts``), so that the training process only copies them to the device -- a step
that is bound by its host time (15,360 tokens) is then shorter by that much.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.batch import BarTokens, Batch
from .attention import FAST_IMPLS, resolve_impl
from .config import MuseformerConfig
from .gathered import plan_for
from .masks import AttentionLayout, BarLayout, bar_layout, cross_layout, pad_bar_tokens, self_attention_layouts
from .scheme import OffsetSet, parse_scheme


def layer_schemes(cfg: MuseformerConfig, num_layers: int, con2con: str, con2sum: str, prefix: str = "") -> dict:
    """Parse the four self-attention schemes into per-layer offset sets (summaries off -> empty sets)."""
    names = {"con2con": con2con, "con2sum": con2sum, "sum2con": cfg.sum2con, "sum2sum": cfg.sum2sum}
    selfs = {
        "con2con": cfg.con2con_self,
        "con2sum": cfg.con2sum_self,
        "sum2con": cfg.sum2con_self,
        "sum2sum": cfg.sum2sum_self,
    }
    out: dict[str, list[OffsetSet]] = {}
    for part, text in names.items():
        label = prefix + part if part.startswith("con2") else part
        out[part] = parse_scheme(label, text, num_layers, selfs[part])
    if cfg.num_summary_tokens_each_chunk <= 0:  # the original forces the summary parts to ((None,),)
        for part in ("con2sum", "sum2con", "sum2sum"):
            out[part] = [OffsetSet(())] * num_layers
    return out


def encoder_layers(cfg: MuseformerConfig) -> int:
    return cfg.encoder_layers if cfg.encoder_layers is not None else cfg.num_layers


def encoder_schemes(cfg: MuseformerConfig) -> dict:
    return layer_schemes(cfg, encoder_layers(cfg), cfg.src_con2con, cfg.src_con2sum, prefix="src_")


def decoder_schemes(cfg: MuseformerConfig, cross: bool) -> dict:
    n = cfg.num_layers
    schemes = layer_schemes(cfg, n, cfg.con2con, cfg.con2sum)
    if cross:
        schemes["cross_con2con"] = parse_scheme("cross_con2con", cfg.cross_con2con, n)
        schemes["cross_con2sum"] = parse_scheme("cross_con2sum", cfg.cross_con2sum, n)
    return schemes


def pad_multiple(cfg: MuseformerConfig, impl: str) -> int:
    """Sequences are padded to the tile size on the fast paths (flex tiles; gather's hand-over to flex)."""
    return cfg.block_size if impl in FAST_IMPLS else 1


@dataclass
class StackLayouts:
    """One stack's layouts: its side's bar layout and per layer (sx, rx) or, with cross-attention,
    (sx, rx, cross). Layers that repeat a scheme share one layout object, and so its plan."""

    side: BarLayout
    layers: list[tuple[AttentionLayout, ...]]

    def to(self, device: torch.device) -> StackLayouts:
        """On ``device`` (layouts and their plans), each shared layout moved once."""
        moved: dict[int, AttentionLayout] = {}

        def one(layout: AttentionLayout) -> AttentionLayout:
            if id(layout) not in moved:
                moved[id(layout)] = layout.to(device)
            return moved[id(layout)]

        return StackLayouts(self.side.to(device), [tuple(one(layout) for layout in layer) for layer in self.layers])


def check_layouts(side: BarLayout, tokens: BarTokens) -> None:
    """Layouts handed to a forward must be those of its batch, padded as its attention path pads."""
    if tuple(side.bar.shape) != tuple(tokens.tokens.shape):
        raise ValueError(
            f"batch.layouts cover {tuple(side.bar.shape)} tokens but the batch has {tuple(tokens.tokens.shape)} "
            "after padding: built for another batch or another attention path (LayoutPlanner's device type)"
        )


def stack_layouts(
    tokens: BarTokens,
    schemes: dict[str, list[OffsetSet]],
    num_layers: int,
    *,
    num_summary: int,
    multiple: int,
    causal: bool,
    pref2pref: str = "lt",
    source: BarLayout | None = None,
) -> StackLayouts:
    """The layouts of a stack over ``tokens`` (unpadded), where the tokens are; with ``source`` (the encoder's
    side) also the cross-attention layouts."""
    side = bar_layout(pad_bar_tokens(tokens, multiple), num_summary, multiple)
    cache: dict[tuple, AttentionLayout] = {}
    layers = []
    for i in range(num_layers):
        sx, rx = self_attention_layouts(cache, side, schemes, i, causal=causal, pref2pref=pref2pref)
        if source is None:
            layers.append((sx, rx))
            continue
        key = ("cross", schemes["cross_con2con"][i], schemes["cross_con2sum"][i])
        if key not in cache:
            cache[key] = cross_layout(side, source, key[1], key[2])
        layers.append((sx, rx, cache[key]))
    return StackLayouts(side, layers)


@dataclass
class BatchLayouts:
    """A batch's layouts, built on the host before the forward (``LayoutPlanner``)."""

    decoder: StackLayouts
    encoder: StackLayouts | None = None

    def to(self, device: torch.device) -> BatchLayouts:
        """On ``device``, plans included (the forward then moves nothing)."""
        return BatchLayouts(self.decoder.to(device), None if self.encoder is None else self.encoder.to(device))

    def pad_plans(self) -> None:
        """Grow every gather plan to its bucketed capacities (``GatherPlan.padded``), in place: batches of
        one padded length then mostly have plans alike, so one CUDA graph of the step serves them all.

        A plan's runs are its query rows' bars: at most the sequence's summary slots (one per complete bar)
        + 2 (an incomplete last bar, the prefix) per sequence, a bound that depends on the padded shape only."""
        padded: dict[int, tuple[object, object]] = {}  # id -> (plan, padded): the plan kept alive, its id unique
        for stack in (self.encoder, self.decoder):
            if stack is None:
                continue
            batch, slots = stack.side.sum_ids.shape
            for layer in stack.layers:
                for layout in layer:
                    for key, plan in layout._gather.items():
                        if plan is None:
                            continue
                        if id(plan) not in padded:
                            padded[id(plan)] = (plan, plan.padded(max_runs=batch * (slots + 2)))
                        layout._gather[key] = padded[id(plan)][1]


class LayoutPlanner:
    """Builds ``BatchLayouts`` for batches on the CPU, with the gather plans where the model will run the
    gather path: what the data loader's workers call after collating (picklable). ``device_type`` is where
    the model runs ("cuda" or "cpu"), which decides the attention path as ``attention_impl="auto"`` does."""

    def __init__(self, cfg: MuseformerConfig, device_type: str, pad_plans: bool = False) -> None:
        self.cfg = cfg
        self.pad_plans = pad_plans  # plans grown to bucketed capacities, for CUDA graphs (``train.graphs``)
        self.impl = resolve_impl(cfg.attention_impl, torch.device(device_type))
        self.translation = cfg.task == "translation"
        self.decoder_schemes = decoder_schemes(cfg, cross=self.translation)
        self.encoder_schemes = encoder_schemes(cfg) if self.translation else None

    def __call__(self, batch: Batch) -> BatchLayouts:
        cfg = self.cfg
        multiple = pad_multiple(cfg, self.impl)
        common = {"num_summary": cfg.num_summary_tokens_each_chunk, "multiple": multiple}
        encoder = None
        if self.translation and batch.source is not None and self.encoder_schemes is not None:
            source = batch.source.on_host()
            encoder = stack_layouts(source, self.encoder_schemes, encoder_layers(cfg), causal=False, **common)
        decoder = stack_layouts(
            batch.prev_output.on_host(), self.decoder_schemes, cfg.num_layers, causal=cfg.con2con_causal,
            pref2pref=cfg.pref2pref_mode, source=None if encoder is None else encoder.side, **common,
        )  # fmt: skip
        if self.impl == "gather":  # the plans (BlockMasks for flex are built on the device, in the forward)
            for stack in (decoder, encoder):
                for layer in stack.layers if stack is not None else ():
                    for layout in layer:
                        plan_for(layout)
        layouts = BatchLayouts(decoder, encoder)
        if self.pad_plans:
            layouts.pad_plans()
        return layouts

    def prepare(self, batch: Batch) -> Batch:
        """The batch with its layouts attached (``Batch.layouts``): the data loader's ``prepare``."""
        batch.layouts = self(batch)
        return batch

"""Museformer's hyper-parameters. Field names are the fairseq flag names (``--con2con`` -> ``con2con``).

Defaults are those of the original ``museformer_lm_v2s1`` architecture; the ``src_*`` and ``cross_*``
fields configure the translation model's encoder and its bar-organised cross-attention, in the same
scheme grammar.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any


@dataclass
class MuseformerConfig:
    vocab_size: int = 0
    task: str = "translation"  # "translation" (score -> perf) or "language_modeling" (decoder only)

    # transformer
    num_layers: int = 4  # decoder layers (the original's --num-layers)
    encoder_layers: int | None = None  # translation only; None = num_layers
    attention_embed_dim: int = 512
    num_attention_heads: int = 8
    ffn_embed_dim: int = 2048
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_fn: str = "gelu"
    normalize_before: bool = True
    no_final_norm: bool = False

    # attention scheme of the decoder (the original's flags and defaults)
    con2con: str = "((((-2, 0), -4, -8, -12, -16, -24, -32),),)"
    con2sum: str = "((((None, -32), (-31, -24), (-23, -16), (-15, -12), (-11, -8), (-7, -4), -3,),),)"
    sum2con: str = "((None,),)"
    sum2sum: str = "((None,),)"
    con2con_self: str = "full"
    con2sum_self: str = "none"
    sum2con_self: str = "full"
    sum2sum_self: str = "full"
    con2con_causal: bool = True
    pref2pref_mode: str = "lt"

    # encoder (score side): non-causal, offsets on both sides
    src_con2con: str = "((((-2, 3), -4, 4, -8, 8, -12, 12, -16, 16, -24, 24, -32, 32),),)"
    src_con2sum: str = (
        "((((None, -32), (-31, -24), (-23, -16), (-15, -12), (-11, -8), (-7, -4), -3,"
        " 3, (5, 8), (9, 12), (13, 16), (17, 24), (25, 32), (33, None)),),)"
    )
    # cross-attention: target bar j reads source bars j+offset token by token (cross_con2con)
    # and the summaries of the others (cross_con2sum)
    cross_con2con: str = "((((-1, 2),),),)"
    cross_con2sum: str = "((((None, -1), (2, None)),),)"

    # summaries
    num_summary_tokens_each_chunk: int = 1

    # embeddings
    use_bar_abs_pos: bool = True
    max_bar_abs_pos: int = 512
    bar_abs_pos_embed_dim: int = 256
    use_beat_abs_pos: bool = True
    max_beat_abs_pos: int = 64
    beat_abs_pos_embed_dim: int = 128
    no_scale_embedding: bool = False
    share_input_output_embed: bool = False

    # implementation
    attention_impl: str = "auto"  # "auto" (gather on CUDA, reference elsewhere), "gather", "flex", "reference"
    block_size: int = 128
    gradient_checkpointing: bool = False
    compile_blocks: bool = False  # torch.compile the layers' tensor-only stretches on CUDA (MuseformerLayer)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> MuseformerConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown model config keys: {', '.join(unknown)}")
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

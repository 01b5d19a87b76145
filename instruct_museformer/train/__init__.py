"""Training and validation with fairseq's command lines, without fairseq.

    imf train DATA-BIN [fairseq-train flags]        # resumes from --save-dir/checkpoint_last when present
    torchrun --nproc_per_node N -m instruct_museformer train DATA-BIN ...   # or --distributed-world-size N
    imf validate DATA-BIN --path CKPT --valid-subset test --truncate-test 10240

Modules: ``options`` (flags, arch defaults, task names), ``optim`` (fairseq's Adam, inverse_sqrt, loss
scaler), ``feed`` (data-bin -> per-rank batch streams), ``graphs`` (CUDA graphs of training steps,
``--cuda-graphs``), ``trainer`` (one update), ``checkpoint``
(atomic safetensors/JSON checkpoint directories, :func:`~.checkpoint.load_checkpoint_model` for
rendering), ``progress`` (log lines, tqdm, TensorBoard), ``run`` (the loops).
"""

from .checkpoint import load_checkpoint_model

__all__ = ["load_checkpoint_model"]

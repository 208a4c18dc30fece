"""Warm start (``init_from``): a new run whose weights come from another run's checkpoint.

Only the model weights are taken. The optimizer moments, the LR schedule, the step counter and the
data position start fresh, because a warm-started run is a new training run (fine-tuning on other
data, e.g. instruction data with loss weights; a new schedule), not a continuation: resuming a run
is what its own checkpoints are for, and they win once it has some.

The weights go through DCP exactly like a resume, so a checkpoint written by any number of ranks
loads into any other number (each rank reads the slices of its own shards). Before anything is
loaded, the checkpoint's architecture is compared with this run's: a mismatch is one error naming
every differing field (or tensor shape, for checkpoints that do not record their architecture),
not DCP's per-rank stack traces.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import CheckpointException
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

from hpcllm.config.loader import validate
from hpcllm.config.model import ModelConfig
from hpcllm.engine.checkpoint import TRAINER_STATE
from hpcllm.engine.checkpoint_find import describe_failures, resolve_checkpoint, single_process_dcp
from hpcllm.engine.dcp_metadata import SafeFileSystemReader, read_metadata
from hpcllm.engine.tensor_parallel import checkpoint_view, restore_from_view
from hpcllm.errors import ConfigError, HpcllmError
from hpcllm.fsutil import read_json

KEY = "init_from"
MODEL_PREFIX = "model."
# Fields that may differ between the checkpoint and the new run: the weights mean the same with
# another context length (RoPE has no position table), RoPE base (context extension), epsilon,
# attention kernel or init scheme (the init is overwritten), and the name is only a label.
MAY_DIFFER = frozenset({"name", "seq_len", "rope_theta", "norm_eps", "attention", "init"})


def load_initial_weights(model: torch.nn.Module, spec: str, cfg: ModelConfig) -> Path:
    """Fill ``model`` (sharded or not) with the weights of the checkpoint ``spec`` names; returns it.

    Called on every rank at the same point (DCP's load is collective).
    """
    ckpt = resolve_checkpoint(spec, KEY)
    state = {"model": get_model_state_dict(model)}
    shapes = {}
    for k, v in state["model"].items():
        assert isinstance(v, torch.Tensor), k  # a model's state dict holds tensors (DTensors when sharded)
        shapes[k] = tuple(v.shape)
    check_architecture(ckpt, cfg, shapes)
    view = checkpoint_view(state)  # tensor parallelism's strided rows, as saved
    try:
        with single_process_dcp():
            dcp.load(view, storage_reader=SafeFileSystemReader(str(ckpt)))
    except CheckpointException as exc:  # raised on every rank alike
        raise HpcllmError(f"{KEY}: cannot load the weights of {ckpt}: {describe_failures(exc)}") from None
    restore_from_view(state, view)
    set_model_state_dict(model, state["model"])
    return ckpt


def check_architecture(ckpt: Path, cfg: ModelConfig, shapes: dict[str, tuple[int, ...]]) -> None:
    """Raise ConfigError unless the checkpoint's weights fit a model of ``cfg`` with these ``shapes``.

    The recorded architecture (``trainer_state.json: model_config``) is compared field by field,
    which also catches changes that keep every shape (tied vs untied head, activation, heads);
    then the tensor shapes in DCP's metadata, which every checkpoint has.
    """
    recorded = (read_json(ckpt / TRAINER_STATE) or {}).get("model_config")
    if recorded is not None:
        saved = validate(ModelConfig, recorded, f"{ckpt / TRAINER_STATE}: model_config").model_dump()
        ours = cfg.model_dump()
        differ = [
            f"{k} {ours[k]!r} (checkpoint: {saved[k]!r})" for k in ours if k not in MAY_DIFFER and ours[k] != saved[k]
        ]
        if differ:
            raise ConfigError(
                f"{KEY}: {ckpt} holds another architecture: {', '.join(differ)}; a warm start needs the "
                f"checkpoint's model (only {', '.join(sorted(MAY_DIFFER - {'name', 'init'}))} may change)"
            )
    metadata = read_metadata(ckpt)
    saved_shapes = {
        fqn[len(MODEL_PREFIX) :]: tuple(meta.size)
        for fqn, meta in metadata.state_dict_metadata.items()
        if fqn.startswith(MODEL_PREFIX) and isinstance(meta, TensorStorageMetadata)
    }
    problems = [
        f"{k} {list(v)} (checkpoint: {list(saved_shapes[k])})"
        for k, v in shapes.items()
        if k in saved_shapes and saved_shapes[k] != v
    ]
    problems += [f"{k} is not in the checkpoint" for k in shapes if k not in saved_shapes]
    if problems:
        shown = "; ".join(problems[:4]) + (f"; and {len(problems) - 4} more" if len(problems) > 4 else "")
        raise ConfigError(f"{KEY}: {ckpt} does not fit this run's model: {shown}")

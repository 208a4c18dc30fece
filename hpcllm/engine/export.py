"""Export a DCP checkpoint as one ``torch.save`` file or as a Hugging Face Llama folder.

The way users take a trained model to evaluation. Both formats read the checkpoint in a single
process, without a process group, whatever number of ranks wrote it: DCP's metadata lists every
tensor's full shape and dtype, so the full tensors are allocated from it and DCP fills them from
all shards.

HF layout: the engine's GPT already uses Llama's conventions where they matter, so the conversion
is a renaming plus one split, and the test suite checks it by comparing logits with
``transformers.LlamaForCausalLM`` on the same tokens:
- RoPE: the engine rotates (x_i, x_{i+D/2}) pairs with θ^(-2i/D) frequencies, which is HF's
  ``rotate_half`` layout. (Meta's original checkpoints interleave pairs and need a row permutation
  of q/k; ours do not.)
- GQA: the fused ``qkv`` weight stacks H query heads, then K key heads, then K value heads, each
  of ``head_dim`` rows; query head h reads K/V head ``h // (H/K)``, as HF's ``repeat_kv`` does. So
  ``q_proj``/``k_proj``/``v_proj`` are consecutive row blocks of ``qkv``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.format_utils import _EmptyStateDictLoadPlanner
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

from hpcllm.config.loader import load_model, validate
from hpcllm.config.model import ModelConfig
from hpcllm.config.training import TrainingConfig
from hpcllm.engine.checkpoint import TRAINER_STATE
from hpcllm.engine.checkpoint_find import single_process_dcp
from hpcllm.engine.dcp_metadata import SafeFileSystemReader, read_metadata
from hpcllm.engine.staged import staged, torch_save
from hpcllm.errors import HpcllmError
from hpcllm.fsutil import as_if_opened, read_json, writing
from hpcllm.rundir import RunDir

MODEL_PREFIX = "model."


def load_model_state(ckpt_dir: Path) -> dict[str, torch.Tensor]:
    """The full (unsharded) model weights of a checkpoint, keyed like ``GPT.state_dict()``."""
    metadata = read_metadata(ckpt_dir)
    target: dict[str, torch.Tensor] = {}
    for fqn, meta in metadata.state_dict_metadata.items():
        if fqn.startswith(MODEL_PREFIX) and isinstance(meta, TensorStorageMetadata):
            target[fqn[len(MODEL_PREFIX) :]] = torch.empty(meta.size, dtype=meta.properties.dtype)
    if not target:
        raise HpcllmError(f"{ckpt_dir}: checkpoint holds no model tensors")
    with single_process_dcp():  # a CLI process: no process group, DCP reads all shards itself
        dcp.load({"model": target}, storage_reader=SafeFileSystemReader(str(ckpt_dir)))
    return target


def checkpoint_model_config(ckpt_dir: Path, run_dir: RunDir) -> ModelConfig:
    """The architecture recorded in the checkpoint, else the one in the run's ``run.yaml``."""
    recorded = (read_json(ckpt_dir / TRAINER_STATE) or {}).get("model_config")
    if recorded is not None:
        return validate(ModelConfig, recorded, f"{ckpt_dir / TRAINER_STATE}: model_config")  # one line if damaged
    return load_model(TrainingConfig, run_dir.config).model


def export_torch(ckpt_dir: Path, output: Path, *, with_optimizer: bool = False) -> None:
    """One ``torch.save`` file: the model state dict, or (``with_optimizer``) the whole DCP state.

    The whole state is loaded as DCP's own converter (``dcp_to_torch_save``) does, but with the index
    read by the restricted unpickler (hpcllm.engine.dcp_metadata); the default keeps
    the optimizer moments out, which would triple the file and are useless for evaluation.
    """
    if with_optimizer:
        state: dict[str, Any] = {}  # filled by the planner with whatever the checkpoint holds
        reader = SafeFileSystemReader(str(ckpt_dir))
        _load_state_dict(state, storage_reader=reader, planner=_EmptyStateDictLoadPlanner(), no_dist=True)
    else:
        state = load_model_state(ckpt_dir)
    _make_parent(output)
    with staged(output) as tmp:
        torch_save(state, tmp)


def _make_parent(output: Path) -> None:
    """The folder the user named for the export (only here: an engine writer never makes folders)."""
    with writing(output):
        output.parent.mkdir(parents=True, exist_ok=True)


def check_llama_compatible(cfg: ModelConfig) -> None:
    """Raise HpcllmError naming every field that Llama cannot express, with the value Llama needs."""
    needed = {"norm": "rmsnorm", "activation": "swiglu", "pos_emb": "rope", "bias": False}
    wrong = [f"model.{k} = {getattr(cfg, k)!r} (Llama needs {v!r})" for k, v in needed.items() if getattr(cfg, k) != v]
    if wrong:
        raise HpcllmError("cannot export as Hugging Face Llama: " + "; ".join(wrong) + ". Use --format torch instead.")


def llama_config(cfg: ModelConfig, dtype: torch.dtype) -> dict[str, Any]:
    """``config.json`` for ``LlamaForCausalLM`` with the same architecture as ``cfg``."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.ffn_dim,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }


def to_llama_state(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Rename the engine's weights to HF Llama's and split the fused QKV (layouts in the module doc)."""
    q_rows, kv_rows = cfg.n_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    out = {"model.embed_tokens.weight": sd["tok_emb.weight"], "model.norm.weight": sd["norm.weight"]}
    if not cfg.tie_embeddings:  # a tied head is the embedding; HF re-ties it on load
        out["lm_head.weight"] = sd["head.weight"]
    for i in range(cfg.n_layers):
        src, dst = f"blocks.{i}.", f"model.layers.{i}."
        q, k, v = sd[src + "attn.qkv.weight"].split([q_rows, kv_rows, kv_rows], dim=0)
        out.update(
            {
                dst + "input_layernorm.weight": sd[src + "attn_norm.weight"],
                dst + "self_attn.q_proj.weight": q,
                dst + "self_attn.k_proj.weight": k,
                dst + "self_attn.v_proj.weight": v,
                dst + "self_attn.o_proj.weight": sd[src + "attn.proj.weight"],
                dst + "post_attention_layernorm.weight": sd[src + "mlp_norm.weight"],
                dst + "mlp.gate_proj.weight": sd[src + "mlp.gate.weight"],
                dst + "mlp.up_proj.weight": sd[src + "mlp.up.weight"],
                dst + "mlp.down_proj.weight": sd[src + "mlp.down.weight"],
            }
        )
    # safetensors stores each tensor whole: split views must become their own contiguous tensors.
    return {k: v.contiguous().clone() for k, v in out.items()}


def export_hf(ckpt_dir: Path, output: Path, cfg: ModelConfig) -> None:
    """A folder ``LlamaForCausalLM.from_pretrained`` loads: ``config.json`` + ``model.safetensors``."""
    from safetensors.torch import save_file

    check_llama_compatible(cfg)
    sd = to_llama_state(load_model_state(ckpt_dir), cfg)
    dtype = next(iter(sd.values())).dtype
    _make_parent(output)
    with staged(output) as tmp:
        tmp.mkdir()
        (tmp / "config.json").write_text(json.dumps(llama_config(cfg, dtype), indent=2) + "\n")
        save_file(sd, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        as_if_opened(tmp / "model.safetensors")  # safetensors leaves it 0600: others could not read the export

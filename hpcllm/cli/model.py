"""``hpcllm model``: what a named model config costs, without torch.

Parameter and FLOP counts come from ``ModelConfig`` and ``hpcllm.perf``, the same functions the
engine and the collector use, so the numbers printed here are the ones MFU is computed with.
"""

from __future__ import annotations

from typing import Optional

import typer
from rich.table import Table

from hpcllm.cli.common import console, fail

model_app = typer.Typer(help="Inspect the named model configs.", no_args_is_help=True)


def _human(n: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


@model_app.command("list")
def list_cmd() -> None:
    """Every named config with its size."""
    from hpcllm.config.model import ModelConfig, preset_names

    table = Table("name", "layers", "d_model", "heads (kv)", "ffn", "seq", "params")
    for name in preset_names():
        c = ModelConfig.from_name(name)
        table.add_row(name, str(c.n_layers), str(c.d_model), f"{c.n_heads} ({c.kv_heads})", str(c.ffn_dim),
                      str(c.seq_len), _human(c.n_params()))
    console.print(table)


@model_app.command("info")
def info_cmd(
    name: str = typer.Argument(..., help="A named config (`hpcllm model list` names them all)."),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", min=1, help="Sequence length for FLOPs (default: the config's)."),
) -> None:
    """Architecture, parameters (total / non-embedding) and training FLOPs per token of NAME."""
    # Imported here: pydantic's model classes cost every other command ~0.1 s of start-up.
    from hpcllm.config.model import ModelConfig, preset_fields

    try:
        preset_fields(name)  # the unknown-name message lists the known ones
    except ValueError as exc:
        fail(exc)
    cfg = ModelConfig.from_name(name)
    t = seq_len or cfg.seq_len
    table = Table(title=f"model {name}", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    rows = [
        ("layers / d_model", f"{cfg.n_layers} / {cfg.d_model}"),
        ("heads / kv heads / head dim", f"{cfg.n_heads} / {cfg.kv_heads} / {cfg.head_dim}"),
        ("ffn hidden / activation", f"{cfg.ffn_dim} / {cfg.activation}"),
        ("norm / positions", f"{cfg.norm} / {cfg.pos_emb}" + (f" (theta {cfg.rope_theta:g})" if cfg.pos_emb == "rope" else "")),
        ("vocab / seq len", f"{cfg.vocab_size} / {cfg.seq_len}"),
        ("tied embeddings / bias", f"{cfg.tie_embeddings} / {cfg.bias}"),
        ("params (total)", f"{cfg.n_params():,} ({_human(cfg.n_params())})"),
        ("params (non-embedding)", f"{cfg.n_params_non_embedding():,} ({_human(cfg.n_params_non_embedding())})"),
        ("params in matmuls (FLOPs)", f"{cfg.n_params_flops():,}"),
        (f"training FLOPs / token (seq {t})", f"{cfg.flops_per_token(t):.4g} (MFU: the seed's 72·L·d² + 12·L·T·d)"),
        ("  with the output head", f"{cfg.flops_per_token_with_head(t):.4g} (MFU+head: 6N + 12·L·T·d, N in matmuls)"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)

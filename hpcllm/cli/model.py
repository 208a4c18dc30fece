"""``hpcllm model``: what a named model config costs, without torch.

Parameter and FLOP counts come from ``ModelConfig`` and ``hpcllm.perf``, the same functions the
engine and the collector use, so the numbers printed here are the ones MFU is computed with; the
memory breakdown comes from ``hpcllm.plan.memory``, the estimate ``submit`` checks points with.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import typer
from rich.table import Table

from hpcllm.cli.common import console, fail, int64
from hpcllm.config.choices import Attention, Checkpointing, Precision, Sharding

if TYPE_CHECKING:
    from hpcllm.config.model import ModelConfig
    from hpcllm.plan.memory import MemoryEstimate


model_app = typer.Typer(help="Inspect the named model configs.", no_args_is_help=True)


def _human(n: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


@model_app.command("list")
def list_cmd() -> None:
    """Every named config with its size."""
    # Imported here: pydantic's model classes cost every other command ~0.1 s of start-up.
    from hpcllm.config.model import ModelConfig, preset_names

    table = Table("name", "layers", "d_model", "heads (kv)", "ffn", "seq", "params")
    for name in preset_names():
        c = ModelConfig.from_name(name)
        table.add_row(
            name,
            str(c.n_layers),
            str(c.d_model),
            f"{c.n_heads} ({c.kv_heads})",
            str(c.ffn_dim),
            str(c.seq_len),
            _human(c.n_params()),
        )
    console.print(table)


@model_app.command("info")
def info_cmd(
    name: str = typer.Argument(..., help="A named config (`hpcllm model list` names them all)."),
    seq_len: int | None = typer.Option(
        None, "--seq-len", min=1, callback=int64, help="Sequence length (default: the config's)."
    ),
    mbs: int = typer.Option(
        1, "--mbs", min=1, callback=int64, help="Micro-batch size (sequences per GPU per micro-step)."
    ),
    gpus: int | None = typer.Option(
        None, "--gpus", min=1, callback=int64, help="GPUs (ranks) in all; default: one node of --cluster, else 1."
    ),
    gpus_per_node: int | None = typer.Option(
        None,
        "--gpus-per-node",
        min=1,
        callback=int64,
        help="Ranks per node (HYBRID_SHARD's default group); default: the cluster's, else --gpus.",
    ),
    sharding: Sharding | None = typer.Option(None, "--sharding", help="FSDP2 sharding (default: the config's)."),
    hsdp_shard_size: int | None = typer.Option(
        None, "--hsdp-shard-size", min=1, callback=int64, help="HYBRID_SHARD group size."
    ),
    precision: Precision | None = typer.Option(
        None,
        "--precision",
        help="Parameter/compute precision (default: the config's).",
    ),
    ac: Checkpointing | None = typer.Option(None, "--ac", help="Activation checkpointing (default: the config's)."),
    ac_every: int | None = typer.Option(
        None,
        "--ac-every",
        min=1,
        callback=int64,
        help="selective: checkpoint every k-th block (default: the config's).",
    ),
    offload: bool = typer.Option(False, "--offload", help="FSDP2 CPU offload of the sharded state."),
    grad_accum: int = typer.Option(1, "--grad-accum", min=1, callback=int64, help="Micro-steps per optimizer step."),
    tp: int = typer.Option(
        1,
        "--tp",
        min=1,
        max=8,
        help="Tensor-parallel ranks inside a node (1, 2, 4, 8): block weights and activations split.",
    ),
    attention: Attention | None = typer.Option(None, "--attention", help="Attention kernel (default: the config's)."),
    cluster: str | None = typer.Option(
        None, "--cluster", "-c", help="Check the fit against this profile's GPU memory."
    ),
) -> None:
    """Architecture, parameters, FLOPs per token and the per-GPU memory breakdown of NAME.

    With --cluster: whether it fits the profile's GPU memory and the largest micro-batch that does.
    """
    from pydantic import ValidationError

    from hpcllm.config.cluster import load_cluster
    from hpcllm.config.model import ModelConfig, preset_fields
    from hpcllm.config.training import ParallelConfig
    from hpcllm.errors import HpcllmError
    from hpcllm.plan.memory import MemorySpec, estimate_memory, largest_fitting_mbs

    try:
        preset_fields(name)  # the unknown-name message lists the known ones
        overrides = {k: v for k, v in (("seq_len", seq_len), ("attention", attention)) if v}
        cfg = ModelConfig.from_name(name, **overrides)
        profile = load_cluster(cluster) if cluster else None
        given: dict[str, Any] = {
            "sharding": sharding,
            "hsdp_shard_size": hsdp_shard_size,
            "precision": precision,
            "activation_checkpointing": ac,
            "ac_every": ac_every,
            "tensor_parallel": tp,  # validated: 1, 2, 4 or 8
        }
        parallel = ParallelConfig(**{k: v for k, v in given.items() if v is not None}, cpu_offload=offload)
    except ValidationError as exc:  # a combination of options the configs reject
        fail(ValueError("; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())))
    except (HpcllmError, ValueError) as exc:
        fail(exc)
    n_gpus = gpus or (profile.gpus_per_node if profile else 1)
    per_node = gpus_per_node or (profile.gpus_per_node if profile else n_gpus)
    device: Literal["cuda", "cpu"] = "cpu" if profile is not None and profile.is_cpu else "cuda"
    tp_problem = parallel.tensor_parallel_problem(cfg, min(per_node, n_gpus))
    if tp_problem:
        fail(ValueError(f"--tp: {tp_problem}"))
    spec = MemorySpec(
        cfg,
        parallel,
        mbs,
        world_size=n_gpus,
        ranks_per_node=min(per_node, n_gpus),
        device=device,
        grad_accum=grad_accum,
    )
    console.print(_architecture_table(name, cfg))
    estimate = estimate_memory(spec)
    console.print(
        estimate_table(
            estimate,
            title=(
                f"memory per {'rank' if device == 'cpu' else 'GPU'}: MBS {mbs} x seq {cfg.seq_len}, {n_gpus} rank(s), "
                f"{parallel.sharding}, {parallel.precision}, AC {parallel.activation_checkpointing}"
                + (f", TP {tp} x DP {n_gpus // tp}" if tp > 1 else "")
            ),
        )
    )
    console.print(f"checkpoint on disk: {_gib(estimate.checkpoint_bytes)} (weights + AdamW state, all ranks)")
    if profile is None:
        return
    if profile.gpu_memory_gib is None:
        console.print(f"[yellow]cluster {profile.name!r} states no gpu_memory_gib: no fit check[/]")
        return
    capacity = profile.gpu_memory_gib
    verdict = "[green]fits[/]" if estimate.fits(capacity) else "[red]does not fit[/]"
    unit = "rank" if device == "cpu" else "GPU"
    console.print(f"{profile.name}: {estimate.peak_gib:.1f} of {capacity:g} GiB per {unit}: {verdict}")
    best = largest_fitting_mbs(spec, capacity)
    if best:
        console.print(f"largest MBS that fits: {best} ({estimate_memory(spec.with_mbs(best)).peak_gib:.1f} GiB)")
    else:
        console.print("[red]not even MBS 1 fits[/]: more GPUs (sharding), activation checkpointing, or CPU offload")


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def _architecture_table(name: str, cfg: ModelConfig) -> Table:
    t = cfg.seq_len
    table = Table(title=f"model {name}", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    rows = [
        ("layers / d_model", f"{cfg.n_layers} / {cfg.d_model}"),
        ("heads / kv heads / head dim", f"{cfg.n_heads} / {cfg.kv_heads} / {cfg.head_dim}"),
        ("ffn hidden / activation", f"{cfg.ffn_dim} / {cfg.activation}"),
        (
            "norm / positions",
            f"{cfg.norm} / {cfg.pos_emb}" + (f" (theta {cfg.rope_theta:g})" if cfg.pos_emb == "rope" else ""),
        ),
        ("vocab / seq len", f"{cfg.vocab_size} / {cfg.seq_len}"),
        ("tied embeddings / bias", f"{cfg.tie_embeddings} / {cfg.bias}"),
        ("params (total)", f"{cfg.n_params():,} ({_human(cfg.n_params())})"),
        ("params (non-embedding)", f"{cfg.n_params_non_embedding():,} ({_human(cfg.n_params_non_embedding())})"),
        ("params in matmuls (FLOPs)", f"{cfg.n_params_flops():,}"),
        # Both conventions (hpcllm.perf): the seed's (the MFU column) and 6N with N = params in matmuls.
        (f"FLOPs/token, seq {t}: MFU", f"{cfg.flops_per_token(t):.4g} = 72·L·d² + 12·L·T·d"),
        (f"FLOPs/token, seq {t}: MFU+head", f"{cfg.flops_per_token_with_head(t):.4g} = 6N + 12·L·T·d"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    return table


def estimate_table(estimate: MemoryEstimate, title: str) -> Table:
    """Every term of ``estimate`` with its size, where it lives and how it was computed, then the peak."""
    table = Table(title=title)
    table.add_column("term", style="bold")
    table.add_column("GiB", justify="right")
    table.add_column("where")
    table.add_column("how")
    for term in estimate.terms:
        table.add_row(term.name, f"{term.gib:.2f}", term.location, term.detail)
    table.add_row(
        "[bold]peak[/]",
        f"[bold]{estimate.peak_gib:.2f}[/]",
        "device",
        f"at {estimate.phase}: {estimate.formula}",
        end_section=True,
    )
    if estimate.host_bytes:
        table.add_row("host", f"{estimate.host_bytes / 2**30:.2f}", "host", "CPU-offloaded state per rank")
    return table

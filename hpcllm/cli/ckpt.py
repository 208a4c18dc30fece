"""``hpcllm ckpt``: list a run's checkpoints and export one for evaluation.

Thin, like the rest of the CLI: parse, call one function, print with rich. ``ls`` reads the
checkpoint files without torch (login nodes); ``ls --verify`` and ``export`` import torch inside
the command, so ``hpcllm --help`` stays torch-free. Errors exit 2, like every other command.
"""

from __future__ import annotations

import datetime as dt
from enum import Enum
from pathlib import Path

import typer

from hpcllm.cli.common import console, err_console, fail, int64
from hpcllm.cli.listing import print_listing
from hpcllm.errors import HpcllmError
from hpcllm.rundir import RunDir

ckpt_app = typer.Typer(help="Inspect and export a run's checkpoints.", no_args_is_help=True)


class ExportFormat(str, Enum):
    torch = "torch"
    hf = "hf"


def _run_dir(path: Path) -> RunDir:
    run = RunDir(path)
    if not run.checkpoints.is_dir():
        raise HpcllmError(f"{path}: no checkpoints/ folder here; give a run directory (it holds run.yaml)")
    return run


@ckpt_app.command("ls")
def ls(
    run_dir: Path = typer.Argument(..., help="Run directory (holds run.yaml and checkpoints/)."),
    verify: bool = typer.Option(
        False,
        "--verify",
        help="Also check every shard against DCP's index (reads the index with torch; catches truncated shards).",
    ),
) -> None:
    """List complete checkpoints, newest last, marking the one `latest` names and any that fail checks.

    Without --verify it needs no torch (login nodes): names, trainer_state.json and DCP's files.
    """
    from hpcllm.checkpoint_layout import (
        CheckpointCorrupt,
        check_files,
        incomplete_saves,
        list_checkpoints,
        read_latest_pointer,
    )

    try:
        run = _run_dir(run_dir)
    except HpcllmError as exc:
        fail(exc)
    if verify:
        from hpcllm.engine.checkpoint_find import verify_checkpoint as check
    else:
        check = check_files
    try:
        latest = read_latest_pointer(run.checkpoints)
    except CheckpointCorrupt as exc:
        latest = None
        err_console.print(f"warning: {exc}", soft_wrap=True, highlight=False, markup=False)
    rows = []
    infos = list_checkpoints(run.checkpoints)
    for info in infos:
        ts = info.trainer_state or {}
        try:
            check(info.path)
            status = "ok" if verify else "complete"
        except CheckpointCorrupt as exc:
            status = f"corrupt: {str(exc).removeprefix(str(info.path) + ': ')}"
        if latest == info.path:
            status += " (latest)"
        saved = ts.get("saved_at_unix")
        rows.append(
            [
                str(info.step),
                str(ts.get("consumed_samples", "?")),
                str(ts.get("world_size", "?")),
                f"{info.size_bytes / 2**20:.1f}",
                dt.datetime.fromtimestamp(saved, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if saved else "?",
                status,
            ]
        )
    if infos:
        headers = ("step", "samples", "ranks", "size (MiB)", "saved (UTC)", "status")
        print_listing(console, str(run.checkpoints), headers, rows, keep_whole=("step", "status"), wrap=("status",))
    else:
        console.print(f"no complete checkpoints in {run.checkpoints}", soft_wrap=True, highlight=False, markup=False)
    for tmp in incomplete_saves(run.checkpoints):
        console.print(
            f"incomplete: {tmp.name} (a save in progress, or one a crash interrupted; the next start removes it)",
            soft_wrap=True,
            markup=False,
        )
    if infos and not verify:
        console.print("shards not checked against DCP's index: `--verify` does (needs torch)", style="dim")


@ckpt_app.command("export")
def export(
    run_dir: Path = typer.Argument(..., help="Run directory (holds run.yaml and checkpoints/)."),
    output: Path = typer.Option(..., "--output", "-o", help="File (torch) or folder (hf) to write."),
    fmt: ExportFormat = typer.Option(
        ExportFormat.torch,
        "--format",
        help="torch: one .pt state dict; hf: a Llama folder for transformers' LlamaForCausalLM.",
    ),
    step: int | None = typer.Option(
        None, min=0, callback=int64, help="Checkpoint step to export; default: the latest."
    ),
    with_optimizer: bool = typer.Option(
        False, "--with-optimizer", help="torch only: include optimizer state (whole DCP state)."
    ),
) -> None:
    """Export a checkpoint (default: the latest) as a torch file or a Hugging Face Llama folder."""
    from hpcllm.engine.checkpoint import (
        CheckpointCorrupt,
        list_checkpoints,
        read_latest_pointer,
        step_dir_name,
        verify_checkpoint,
    )
    from hpcllm.engine.export import checkpoint_model_config, export_hf, export_torch

    try:
        run = _run_dir(run_dir)
        try:
            ckpt = run.checkpoints / step_dir_name(step) if step is not None else read_latest_pointer(run.checkpoints)
        except CheckpointCorrupt as exc:
            raise HpcllmError(f"cannot export: {exc}; name a checkpoint with --step") from None
        if ckpt is None or not ckpt.is_dir():
            steps = ", ".join(str(c.step) for c in list_checkpoints(run.checkpoints)) or "none"
            what = f"no checkpoint {ckpt.name}" if ckpt is not None else "no `latest` pointer"
            raise HpcllmError(f"{run.checkpoints}: {what}; complete checkpoints at steps: {steps} (use --step)")
        try:
            verify_checkpoint(ckpt)
        except CheckpointCorrupt as exc:
            raise HpcllmError(f"cannot export: {exc} (see `hpcllm ckpt ls {run_dir}`)") from None
        if with_optimizer and fmt is not ExportFormat.torch:
            raise HpcllmError("--with-optimizer applies to --format torch only")
        with console.status(f"exporting {ckpt.name} as {fmt.value} ..."):
            if fmt is ExportFormat.torch:
                export_torch(ckpt, output, with_optimizer=with_optimizer)
            else:
                export_hf(ckpt, output, checkpoint_model_config(ckpt, run))
    except HpcllmError as exc:
        fail(exc)
    console.print(f"wrote {output} ({fmt.value}, from {ckpt})", soft_wrap=True, highlight=False, markup=False)

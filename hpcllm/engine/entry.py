"""The engine's entry point (``python -m hpcllm.engine``): load run.yaml, set up the ranks, run the
training loop (``train``) or the batch-size probe (``run_probe``), and always leave a summary.

Apart from ``train.py`` so that the probe, which builds on the training step, and the loop do not
import each other.
"""

from __future__ import annotations

import os
import traceback
from pathlib import Path
from typing import Any

from rich.console import Console

from hpcllm.config.loader import load_model
from hpcllm.config.training import TrainingConfig
from hpcllm.engine.distributed import barrier, init_distributed, shutdown_distributed
from hpcllm.engine.failed import write_failed
from hpcllm.engine.probe import run_probe
from hpcllm.engine.trainer import train
from hpcllm.errors import ConfigError, HpcllmError
from hpcllm.rundir import RunDir
from hpcllm.sitepaths import expand_site_paths

EXIT_CONFIG_ERROR = 2
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def run(config_path: Path, *, resume: bool = True) -> int:
    """Entry point of ``python -m hpcllm.engine``: set up ranks, train, and always leave a summary."""
    config_path = Path(config_path)
    run_dir = RunDir(config_path.parent)
    rank = int(os.environ.get("RANK", "0"))
    summary: dict[str, Any] = {"run_id": run_dir.run_id}
    try:
        # $CINECA_SCRATCH/... and ~/... in paths mean this node's values (docs/sites.md).
        cfg = expand_site_paths(load_model(TrainingConfig, config_path), str(config_path))
        summary["run_id"] = cfg.run_id
        env = init_distributed(cfg.device, cpu_collectives=cfg.parallel.cpu_offload)
        try:
            code = (run_probe if cfg.probe is not None else train)(cfg, run_dir, env, resume=resume, summary=summary)
            # Leave together: a rank that tears gloo down while a peer is still publishing a
            # checkpoint or writing the summary can abort that peer (seen once under load in CI).
            barrier()
            return code
        finally:
            shutdown_distributed()
    except HpcllmError as exc:
        write_failed(run_dir, summary, str(exc), rank)
        if rank == 0:
            err_console.print(f"[red]error:[/] {exc}")
        return EXIT_CONFIG_ERROR if isinstance(exc, ConfigError) else 1
    except BaseException as exc:
        if not isinstance(exc, (KeyboardInterrupt, SystemExit)):
            write_failed(run_dir, summary, "".join(traceback.format_exception(exc)), rank)
        raise

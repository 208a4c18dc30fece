"""The backend interface: submit a rendered run, ask for states, cancel (submitit's tiny API)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

from hpcllm.config.cluster import ClusterProfile
from hpcllm.launch.manifest import Manifest, RunState
from hpcllm.rundir import RunDir


class Backend(ABC):
    name: str

    def __init__(self, cluster: ClusterProfile) -> None:
        self.cluster = cluster
        # Why each still-pending run waits (run id -> the scheduler's reason, e.g. "Priority"),
        # as of the last ``refresh``; shown by `hpcllm status`, never written to the manifest.
        self.pending_reasons: dict[str, str] = {}

    @abstractmethod
    def submit(self, run_dir: RunDir, manifest: Manifest) -> str:
        """Start (or queue) the run's ``job.sbatch``; return the job id. Updates ``manifest``."""

    def submit_all(self, items: list[tuple[RunDir, Manifest]]) -> list[str]:
        """Submit several runs, in order; a backend may batch them (SLURM job arrays).

        A run that was submitted has its manifest saved with state pending; on an error the
        remaining ones are left as they were for the caller to mark.
        """
        return [self.submit(run_dir, manifest) for run_dir, manifest in items]

    def cancel_orphans(self, grid: Path) -> str | None:
        """Cancel the jobs that an interrupted submit of the grid in folder ``grid`` left in the
        scheduler with no manifest naming them; one line saying what went (None: nothing). The
        caller holds the grid's submit lock. The local backend leaves none: its runner exits by
        itself when the manifest does not name it."""
        return None

    @abstractmethod
    def refresh(self, items: list[tuple[RunDir, Manifest]]) -> dict[str, RunState]:
        """Current state of each run (keyed by run id), from the scheduler and the run directory."""

    @abstractmethod
    def cancel(self, run_dir: RunDir, manifest: Manifest) -> None:
        """Stop the run: a running engine checkpoints first where the scheduler allows it."""

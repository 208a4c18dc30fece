"""The run directory layout: the one place that names the files a run reads and writes.

    results/<experiment>/<cluster>/<run_id>/
        job.sbatch          rendered batch script (hpcllm.launch.render)
        run.yaml            resolved TrainingConfig, the engine's only input
        manifest.json       orchestrator state: job ids, states, restarts (atomic writes)
        .manifest.lock      locked around every read-modify-write of manifest.json (launch/locks.py)
        slurm-<jobid>.out   scheduler log, appended across requeues
        metrics.jsonl       one JSON object per logged step (engine)
        summary.json        medians + table fields + status (engine, atomic)
        runtime.jsonl       per attempt: versions, hosts, CPUs and devices of every rank (engine)
        checkpoints/        step_<N>/ DCP folders and the `latest` pointer (engine)
        tensorboard/        TensorBoard event files (engine, rank 0; tracking.tensorboard)
        wandb/              Weights & Biases files (engine, rank 0; tracking.wandb)
        profile/            profiler traces trace-rank<R>-steps<A>-<B>.json (+ CUDA memory snapshots)
        STOP                present = the batch script asked the engine to checkpoint and stop

    results/<experiment>/<cluster>/.submit.lock   held by `hpcllm submit` of that grid

Both the orchestrator and the engine import this module, so the names cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Exit code of an engine that stopped on request (signal or STOP file) after saving a checkpoint.
# EX_TEMPFAIL from sysexits.h: "try again later", which is what a requeue does.
EXIT_PREEMPTED = 75

SUMMARY_STATUS_COMPLETED = "completed"
SUMMARY_STATUS_PREEMPTED = "preempted"
SUMMARY_STATUS_FAILED = "failed"

SUBMIT_LOCK_NAME = ".submit.lock"


@dataclass(frozen=True)
class RunDir:
    path: Path

    @classmethod
    def of(cls, results_root: Path, experiment: str, cluster: str, run_id: str) -> "RunDir":
        return cls(Path(results_root) / experiment / cluster / run_id)

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def config(self) -> Path:
        return self.path / "run.yaml"

    @property
    def lock_file(self) -> Path:
        return self.path / ".manifest.lock"

    @property
    def job_script(self) -> Path:
        return self.path / "job.sbatch"

    @property
    def manifest(self) -> Path:
        return self.path / "manifest.json"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def runtime(self) -> Path:
        return self.path / "runtime.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    @property
    def profile(self) -> Path:
        return self.path / "profile"

    def profile_trace(self, rank: int, first_step: int, last_step: int) -> Path:
        return self.profile / f"trace-rank{rank}-steps{first_step}-{last_step}.json"

    def memory_snapshot(self, rank: int, first_step: int, last_step: int) -> Path:
        return self.profile / f"memory-rank{rank}-steps{first_step}-{last_step}.pickle"

    def profile_files(self) -> list[Path]:
        """Traces and memory snapshots written so far, sorted by name."""
        return sorted(p for p in self.profile.glob("*-rank*-steps*") if not p.name.startswith("."))

    @property
    def stop_file(self) -> Path:
        return self.path / "STOP"

    # `%j` is expanded by sbatch; the local backend substitutes its own job id.
    LOG_PATTERN = "slurm-%j.out"

    def log_file(self, job_id: str) -> Path:
        return self.path / self.LOG_PATTERN.replace("%j", str(job_id))

    def log_files(self) -> list[Path]:
        return sorted(self.path.glob(self.LOG_PATTERN.replace("%j", "*")))


def submit_lock(results_root: Path, experiment: str, cluster: str) -> Path:
    """The lock ``hpcllm submit`` holds while it submits one experiment's grid to one cluster."""
    return Path(results_root) / experiment / cluster / SUBMIT_LOCK_NAME


def find_run_dirs(root: Path) -> list[RunDir]:
    """Every run directory below ``root`` (a dir holding run.yaml), sorted by path."""
    root = Path(root)
    if (root / "run.yaml").exists():
        return [RunDir(root)]
    return [RunDir(p.parent) for p in sorted(root.rglob("run.yaml"))]

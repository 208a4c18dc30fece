"""``manifest.json``: the orchestrator's record of one run (job ids, state, restarts).

Written atomically (temp file + rename) by whoever owns the run at the moment: ``hpcllm submit``
before a job exists, then the local runner or the batch script's epilogue, and ``hpcllm status`` or
``cancel`` when they learn of an end. Every change is a read-modify-write under the run's lock
(``update_manifest``), so that no writer overwrites another's update. The engine never writes it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hpcllm import runfiles
from hpcllm.errors import HpcllmError
from hpcllm.fsutil import atomic_write_json
from hpcllm.launch.locks import exclusive
from hpcllm.launch.procid import ProcessId
from hpcllm.rundir import MANIFEST, RunDir, now


class RunState(str, Enum):
    RENDERED = "rendered"  # written by --dry-run, never submitted
    SUBMIT_FAILED = "submit_failed"  # the scheduler refused the script
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def active(self) -> bool:
        return self in (RunState.PENDING, RunState.RUNNING)


class Restart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    time: str
    reason: str
    nodes: str | None = None
    last_step: int | None = None
    job_id: str | None = None  # the job that restarted (SLURM_RESTART_COUNT counts per job)
    failed_nodes: list[str] = Field(default_factory=list)  # nodes found down when it restarted


class Submission(BaseModel):
    model_config = ConfigDict(extra="forbid")

    job_id: str
    time: str
    exclude: list[str] = Field(default_factory=list)


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run_id: str
    experiment: str
    cluster: str
    backend: str
    state: RunState = RunState.RENDERED
    job_id: str | None = None
    submissions: list[Submission] = Field(default_factory=list)
    restarts: list[Restart] = Field(default_factory=list)
    max_restarts: int = 0
    time_limit: str | None = None
    signal_before_end_s: int | None = None
    exclude_nodes: list[str] = Field(default_factory=list)
    slow_nodes: dict[str, str] = Field(default_factory=dict)  # node -> why, from the last pre-flight
    consumed_energy_j: float | None = None  # sacct ConsumedEnergy of the job's steps, all attempts
    energy_note: str | None = None  # where that figure comes from, or why there is none
    depends_on: list[str] = Field(default_factory=list)  # job ids that must succeed first (afterok)
    nodes: str | None = None  # node list of the current (or last) attempt
    job_name: str | None = None  # the job's name in the scheduler (a job array's, for array tasks)
    runner_pid: int | None = None  # kept for manifests of earlier versions; ``runner`` identifies it
    runner: ProcessId | None = None  # local backend: the runner process, verified before any signal
    job_process: ProcessId | None = None  # local backend: the job's process group (batch shell, engine)
    cancel_requested: str | None = None  # `hpcllm cancel` asked a running job to stop (the reason)
    exit_code: int | None = None
    reason: str | None = None
    error: str | None = None
    point: dict[str, Any] = Field(default_factory=dict)
    expected: dict[str, Any] = Field(default_factory=dict)  # the cluster's performance references
    created_at: str = Field(default_factory=now)
    updated_at: str = Field(default_factory=now)

    def mark_submitted(self, job_id: str, *, job_name: str | None = None, exclude: list[str] | None = None) -> None:
        """A new job now carries this run: record it and forget the previous attempt's outcome."""
        self.job_id = job_id
        self.job_name = job_name
        self.state = RunState.PENDING
        self.nodes = None
        self.runner_pid = None
        self.runner = None
        self.cancel_requested = None
        # job_process stays: a new runner refuses to start while an earlier attempt's job still runs.
        self.exit_code = None
        self.reason = None
        self.error = None
        self.submissions.append(Submission(job_id=job_id, time=now(), exclude=list(exclude or [])))


def load_manifest(run_dir: RunDir) -> Manifest | None:
    """The run's manifest, None if it has none; a damaged one is an error that names the file."""
    try:
        # pydantic's own JSON parser: a third of the time of json.loads + model_validate (status
        # reads every manifest under the results folder)
        return Manifest.model_validate_json(runfiles.read_bytes(run_dir.file(MANIFEST)))
    except runfiles.MissingFile:
        return None
    except runfiles.RunFileProblem as exc:  # a directory, FIFO, link loop, unreadable, huge
        raise HpcllmError(f"{exc}; move it away to let hpcllm treat the run as never submitted") from None
    except (ValueError, ValidationError) as exc:  # torn JSON, or not a manifest of ours
        raise HpcllmError(
            f"{run_dir.manifest}: not a valid manifest ({str(exc).splitlines()[0]}); "
            "move it away to let hpcllm treat the run as never submitted"
        ) from None


def save_manifest(run_dir: RunDir, manifest: Manifest, *, durable: bool = True) -> None:
    """``durable=False`` for a manifest that only says "rendered" (the next submit writes it again)."""
    manifest.updated_at = now()
    # Never recreates a run folder that was moved away (a job ending after the move).
    atomic_write_json(run_dir.manifest, manifest.model_dump(mode="json"), durable=durable, make_parents=False)


def manifest_lock(run_dir: RunDir) -> AbstractContextManager[None]:
    """The run's lock: hold it from reading the manifest to saving the changed one."""
    return exclusive(run_dir.lock_file, make_parents=False)


@contextmanager
def update_manifest(run_dir: RunDir) -> Iterator[Manifest]:
    """The current manifest, read under the run's lock and saved when the block ends without error."""
    with manifest_lock(run_dir):
        manifest = load_manifest(run_dir)
        if manifest is None:
            raise HpcllmError(f"{run_dir.manifest}: missing; was this run submitted with `hpcllm submit`?")
        yield manifest
        save_manifest(run_dir, manifest)

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
        probe.json          a batch-size probe's trials and answer (engine probe mode, atomic)
        checkpoints/        step_<N>/ DCP folders and the `latest` pointer (engine)
        tensorboard/        TensorBoard event files (engine, rank 0; tracking.tensorboard)
        wandb/              Weights & Biases files (engine, rank 0; tracking.wandb)
        profile/            profiler traces trace-rank<R>-steps<A>-<B>.json (+ CUDA memory snapshots)
        STOP                present = the batch script asked the engine to checkpoint and stop
        heartbeat/          rank<R>.json: each rank's last step, step time, node (engine, throttled)
        watchdog/           on a hang: stacks-rank<R>.txt, rank<R>.json, flight-rank<R>.pkl (engine)
        watchdog.json       the hang verdict: rank, node, step, reason (engine, rank 0, atomic)
        preflight.json      the pre-flight's figures per node and the slow nodes (engine, rank 0, atomic)
        stragglers.json     ranks consistently slower than the median rank (engine, rank 0, atomic)

    results/<experiment>/<cluster>/.submit.lock   held by `hpcllm submit` of that grid

Both the orchestrator and the engine import this module, so the names cannot drift apart.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from functools import cached_property
from pathlib import Path
from typing import Any

from hpcllm.errors import ConfigError, HpcllmError

# Exit code of an engine that stopped on request (signal or STOP file) after saving a checkpoint.
# EX_TEMPFAIL from sysexits.h: "try again later", which is what a requeue does.
EXIT_PREEMPTED = 75

RUN_CONFIG = "run.yaml"  # its presence makes a folder a run directory
MANIFEST = "manifest.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
RUNTIME = "runtime.jsonl"
PROFILE_DIR = "profile"
TENSORBOARD_DIR = "tensorboard"
HEARTBEAT_DIR = "heartbeat"
WATCHDOG_DIR = "watchdog"
WATCHDOG_VERDICT = "watchdog.json"
PREFLIGHT = "preflight.json"
STRAGGLERS = "stragglers.json"

SUMMARY_STATUS_COMPLETED = "completed"
SUMMARY_STATUS_PREEMPTED = "preempted"
SUMMARY_STATUS_FAILED = "failed"
# summary.json "kind" of a batch-size probe; a training run's summary has no kind. The scaling table
# leaves probes out: they have their own (hpcllm.collect.probes).
SUMMARY_KIND_PROBE = "probe"

SUBMIT_LOCK_NAME = ".submit.lock"

# `hpcllm doctor --gpu`: its job script and hpcllm.engine.site_check print each report as one log line
# `HPCLLM-DOCTOR {json}`; hpcllm.site.jobchecks reads them back from slurm-<jobid>.out.
DOCTOR_REPORT_PREFIX = "HPCLLM-DOCTOR "


# profile_trace / memory_snapshot names (dot files are writes in progress)
_PROFILE_FILE = re.compile(r"[^.].*-rank\d+-steps.*")


class RunDir:
    """One run's folder and the names of its files.

    It keeps the folder as a string and makes ``path`` (a Path) only when asked: ``status`` and
    ``collect`` list 10,000 run folders, and building a Path for each cost a third of the listing.
    """

    _path: str

    def __init__(self, path: Path | str) -> None:
        self._path = str(Path(path))

    @classmethod
    def _listed(cls, path: str) -> RunDir:
        """From a path ``os.scandir`` gave (already in Path's normal form): no parsing."""
        run_dir = cls.__new__(cls)
        run_dir._path = path
        return run_dir

    @classmethod
    def of(cls, results_root: Path, experiment: str, cluster: str, run_id: str) -> RunDir:
        """The run folder of these names; ConfigError unless each is one plain path component."""
        for what, name in (("experiment name", experiment), ("cluster name", cluster), ("run id", run_id)):
            check_name(name, what)
        return cls(Path(results_root) / experiment / cluster / run_id)

    @cached_property
    def path(self) -> Path:
        return Path(self._path)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunDir) and other._path == self._path

    def __hash__(self) -> int:
        return hash(self._path)

    def __repr__(self) -> str:
        return f"RunDir({self._path!r})"

    def __fspath__(self) -> str:
        return self._path

    @property
    def run_id(self) -> str:
        return os.path.basename(self._path)

    @property
    def cluster(self) -> str:
        """The cluster folder above the run (``results/<experiment>/<cluster>/<run_id>``)."""
        return os.path.basename(os.path.dirname(self._path))

    @property
    def lock_file(self) -> Path:
        return self.path / ".manifest.lock"

    def file(self, name: str) -> str:
        """``name`` in this run directory, as a string: for commands that read a file of each of
        10,000 runs (``status``, ``collect``), where building a Path costs more than reading it."""
        return os.path.join(self._path, name)

    @property
    def experiment(self) -> str:
        return os.path.basename(os.path.dirname(os.path.dirname(self._path)))

    @cached_property
    def config(self) -> Path:
        return self.path / RUN_CONFIG

    @cached_property
    def job_script(self) -> Path:
        return self.path / "job.sbatch"

    @cached_property
    def manifest(self) -> Path:
        return self.path / MANIFEST

    @cached_property
    def metrics(self) -> Path:
        return self.path / METRICS

    @cached_property
    def summary(self) -> Path:
        return self.path / SUMMARY

    @cached_property
    def runtime(self) -> Path:
        return self.path / RUNTIME

    @cached_property
    def probe(self) -> Path:
        return self.path / "probe.json"

    @cached_property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @cached_property
    def tensorboard(self) -> Path:
        return self.path / TENSORBOARD_DIR

    @cached_property
    def profile(self) -> Path:
        return self.path / PROFILE_DIR

    def profile_trace(self, rank: int, first_step: int, last_step: int) -> Path:
        return self.profile / f"trace-rank{rank}-steps{first_step}-{last_step}.json"

    def memory_snapshot(self, rank: int, first_step: int, last_step: int) -> Path:
        return self.profile / f"memory-rank{rank}-steps{first_step}-{last_step}.pickle"

    def profile_files(self) -> list[Path]:
        """Traces and memory snapshots written so far, sorted by name.

        One ``scandir`` (most runs have no profile folder): ``status`` asks this of every run, and
        a glob per run cost a tenth of ``status`` over 10,000 runs.
        """
        try:
            with os.scandir(self.file(PROFILE_DIR)) as entries:
                names = [e.name for e in entries if _PROFILE_FILE.fullmatch(e.name)]
        except OSError:  # none, not a folder, or one this user may not list: no traces to name
            return []
        return [self.profile / name for name in sorted(names)]

    def heartbeat(self, rank: int) -> Path:
        return self.path / HEARTBEAT_DIR / f"rank{rank}.json"

    @cached_property
    def watchdog_dir(self) -> Path:
        return self.path / WATCHDOG_DIR

    @cached_property
    def watchdog_verdict(self) -> Path:
        return self.path / WATCHDOG_VERDICT

    @cached_property
    def stragglers(self) -> Path:
        return self.path / STRAGGLERS

    @cached_property
    def preflight(self) -> Path:
        return self.path / PREFLIGHT

    @cached_property
    def stop_file(self) -> Path:
        return self.path / "STOP"

    # `%j` is expanded by sbatch; the local backend substitutes its own job id.
    LOG_PATTERN = "slurm-%j.out"

    def log_file(self, job_id: str) -> Path:
        return self.path / self.LOG_PATTERN.replace("%j", str(job_id))

    def log_files(self) -> list[Path]:
        return sorted(self.path.glob(self.LOG_PATTERN.replace("%j", "*")))

    def latest_log(self, job_id: str | None = None) -> Path | None:
        """The log of the run's current job (``job_id``, the manifest's), else of the newest job by
        its id: never by mtime, which a copied file or a stepped clock puts in the future."""
        if job_id and self.log_file(job_id).is_file():
            return self.log_file(job_id)
        prefix, suffix = self.LOG_PATTERN.split("%j")

        def job_key(path: Path) -> tuple[int, ...]:
            job = path.name[len(prefix) : len(path.name) - len(suffix)]
            return tuple(int(part) if part.isdigit() else -1 for part in job.split("_"))

        return max(self.log_files(), key=job_key, default=None)


NAME_MAX = 255  # bytes of one path component on every Linux file system (longer: ENAMETOOLONG)


def check_results_folder(root: Path) -> Path:
    """``root`` if it is a folder or can be made one, else HpcllmError in one line: a results root that is
    a file (or below one) would otherwise surface as a puzzling error about the first file read in it."""
    for here in (root, *root.absolute().parents):
        if os.path.lexists(here):
            if not os.path.isdir(here):
                where = "is" if here == root else f"cannot be made: {here} is"
                raise HpcllmError(f"{root}: the results root {where} not a folder; give a folder (--results)")
            break
    return root


def check_name(value: str, what: str) -> str:
    """``value`` if it can be one component of a path, else ConfigError naming ``what``.

    For every name that becomes part of a path (an account, an experiment, a cluster, a run id):
    no separator, not ``.`` or ``..``, nothing empty, no NUL or control character. One check for all,
    rather than a pattern per field that a new field could forget.
    """
    if (
        not value
        or len(value.encode("utf-8", "surrogateescape")) > NAME_MAX
        or value in (".", "..")
        or "/" in value
        or os.sep in value
        or (os.altsep and os.altsep in value)
        or any(ord(c) < 32 or ord(c) == 127 for c in value)
    ):
        raise ConfigError(
            f"{what} {value[:80]!r}{'...' if len(value) > 80 else ''}: not a usable name; it becomes a folder "
            f"name, so it must be non-empty, at most {NAME_MAX} bytes, hold no '/', no control characters, "
            "and not be '.' or '..'"
        )
    return value


def contained(root: Path | str, path: Path | str, what: str) -> Path:
    """``path`` (relative paths are taken under ``root``) if it stays inside ``root`` once ``..`` and
    symbolic links are resolved, else ConfigError naming ``what``.

    For paths built from a value read from a file or the command line (a pointer, a name): after
    resolution, so neither ``../x`` nor a link out of ``root`` gets through.
    """
    full = Path(root) / path
    if not within(root, full):
        raise ConfigError(f"{what}: {str(path)!r} leads outside {root} (to {os.path.realpath(full)})")
    return full


def within(root: Path | str, path: Path | str, *, below: bool = False) -> bool:
    """Whether ``path`` is ``root`` or lies below it (``below``: only below it) once ``..`` and
    symbolic links are resolved (``/`` holds everything)."""
    real_root, real = os.path.realpath(root), os.path.realpath(path)
    return (real == real_root and not below) or real.startswith(real_root.rstrip(os.sep) + os.sep)


def submit_lock(results_root: Path, experiment: str, cluster: str) -> Path:
    """The lock ``hpcllm submit`` holds while it submits one experiment's grid to one cluster."""
    return Path(results_root) / experiment / cluster / SUBMIT_LOCK_NAME


def find_run_dirs(root: Path, skipped: list[str] | None = None) -> list[RunDir]:
    """Every run directory below ``root`` (a dir holding run.yaml), sorted by path.

    ``skipped`` receives one line per folder that could not be listed (another user's, umask 077),
    so that a command can say what it left out and why instead of leaving it out without a word.

    A walk with ``os.scandir`` that does not descend into run directories: their checkpoints hold
    thousands of shard files, and ``status``/``collect`` over 10,000 runs must not visit them.
    """
    root = Path(root)
    if (root / RUN_CONFIG).exists():
        return [RunDir(root)]
    found: list[RunDir] = []
    # Real paths of every folder visited: a symlink to one of them (a `latest -> run_7` convenience
    # link, a loop back to an ancestor, /proc/self/root) adds nothing twice. Symlinks are followed
    # only after every real folder was walked, so a run is listed under its own path, not a link's.
    seen: set[str] = {os.path.realpath(root)}
    links: list[str] = []

    def walk(folder: str) -> None:
        try:
            with os.scandir(folder) as it:
                entries = sorted((e for e in it if e.is_dir()), key=lambda e: e.name)
        except FileNotFoundError:  # vanished meanwhile: nothing to list there
            return
        except OSError as exc:  # unreadable: said, not hidden
            if skipped is not None:
                skipped.append(f"{folder}: cannot list it ({exc.strerror}); its runs are left out")
            return
        for entry in entries:
            if entry.is_symlink():
                links.append(entry.path)
            else:
                visit(entry.path)

    def visit(path: str) -> None:
        real = os.path.realpath(path)
        if real in seen or within(real, os.path.dirname(path)):  # seen, or a link up to an ancestor
            return
        seen.add(real)
        if os.path.exists(os.path.join(path, RUN_CONFIG)):
            found.append(RunDir._listed(path))
        else:
            walk(path)

    walk(str(root))
    while links:
        visit(links.pop(0))
    return sorted(found, key=lambda run: str(run.path).split(os.sep))  # the walk's order: level by level


def now() -> str:
    """The timestamp every run and search file records (UTC, ISO 8601, seconds)."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# The results root: --results, else $HPCLLM_RESULTS (point it at a profile's paths.results once), else
# (for submit) the profile's paths.results, else ./results relative to where `hpcllm` runs.
RESULTS_ENV = "HPCLLM_RESULTS"
DEFAULT_RESULTS = Path("results")


def results_from_env() -> Path | None:
    """``$HPCLLM_RESULTS`` when set and not empty: the one place that reads it."""
    value = os.environ.get(RESULTS_ENV)
    return Path(value) if value else None


def describe_stragglers(ranks: list[dict[str, Any]]) -> str:
    """``rank 3 on n2 (0.62x)``: stragglers.json's (and summary.json's) ``ranks``, for logs, status and the report."""
    return ", ".join(
        f"rank {s['rank']} on {s.get('node') or '?'} ({s['ratio']:.2f}x{', recovered' if s.get('recovered') else ''})"
        for s in ranks
    )

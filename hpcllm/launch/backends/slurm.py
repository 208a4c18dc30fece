"""SLURM backend: ``sbatch --parsable`` to submit, one ``squeue`` for all states, ``scancel`` to stop.

State comes from three places, in this order, because none is complete on its own:

1. ``manifest.json``: the batch script's hooks (``hpcllm.launch.jobhooks``) record every start,
   restart and outcome there; once it says completed/failed/cancelled, that is the answer.
2. ``squeue --states=all``: pending/running jobs, and finished ones for ``MinJobAge`` seconds. A
   job that ended without the hooks (killed at the time limit, cancelled while pending, a
   dependency that can never be met) is recorded from here.
3. ``sacct`` where accounting exists (never required: many sites and the local cluster have none),
   else the ``jobcomp/filetxt`` log where the site keeps one, then ``summary.json``; a job SLURM
   has forgotten that left none of these is failed, with that reason.

Job ids are reused after a cluster restart, so a job id alone is never trusted: the job's name in
the scheduler must be the one ``job.sbatch`` asked for, or the job is someone else's.
"""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

from hpcllm.config.cluster import ClusterProfile
from hpcllm.errors import BackendError
from hpcllm.fsutil import atomic_write_text, read_json
from hpcllm.launch import sigint
from hpcllm.launch.arrays import array_key, array_name, array_script
from hpcllm.launch.backends.base import Backend
from hpcllm.launch.backends.orphans import HELD_BY_USER, cancel_held_orphans
from hpcllm.launch.backends.slurmtext import (
    expected_job_name,
    job_state,
    jobcomp_state,
    parse_duration,
    parse_job_id,
    sbatch_option,
    script_error,
    submitted_job_name,
    usable_excludes,
)
from hpcllm.launch.manifest import Manifest, RunState, load_manifest, manifest_lock, save_manifest
from hpcllm.launch.runstate import (
    Actor,
    Evidence,
    confirm_cancel,
    decide_end,
    observer_lock,
    request_cancel,
    save_observed,
    transition,
    withdraw_cancel,
)
from hpcllm.launch.slurmcmd import parse_scontrol_record, run_slurm
from hpcllm.rundir import SUMMARY_STATUS_COMPLETED, RunDir


def shorten_time_limit(job_id: str, grace_s: int) -> str | None:
    """Lower a running job's time limit to its run time + ``grace_s`` (whole minutes, as SLURM keeps
    them); users may lower a limit, never raise it. Returns the new limit in minutes, or None when
    the job's limit is already that short or the scheduler refused (the job then ends on its own
    once the engine has checkpointed)."""
    proc = run_slurm(["scontrol", "-o", "show", "job", job_id], check=False)
    record = parse_scontrol_record(proc.stdout.splitlines()[0]) if proc.returncode == 0 and proc.stdout else {}
    run_time, limit = parse_duration(record.get("RunTime", "")), parse_duration(record.get("TimeLimit", ""))
    if run_time is None:
        return None
    minutes = -(-(run_time + grace_s) // 60)
    if limit is not None and minutes * 60 >= limit:
        return None
    update = run_slurm(["scontrol", "update", f"JobId={job_id}", f"TimeLimit={minutes}"], check=False)
    return str(minutes) if update.returncode == 0 else None


def held_hint(reason: str, job_id: str) -> str:
    """A held job waits for a person, not the scheduler: say how it starts. hpcllm holds each job
    until its manifest names it; a submit killed between that save and the release leaves it held
    (the user may also have held it on purpose: it is said, not done)."""
    if reason != HELD_BY_USER:
        return reason
    return f"{reason}: held; `scontrol release {job_id}` lets it start"


def _release(job_id: str) -> None:
    """Let a job submitted with --hold start (for an array id, every task of it)."""
    run_slurm(["scontrol", "release", job_id])


class SlurmBackend(Backend):
    name = "slurm"

    def __init__(self, cluster: ClusterProfile) -> None:
        super().__init__(cluster)
        self._jobcomp: Path | None = None
        self._jobcomp_asked = False

    def submit(self, run_dir: RunDir, manifest: Manifest) -> str:
        exclude = self._excludes(run_dir, manifest)
        with sigint.deferred():  # a held job no manifest names: only SIGKILL can leave one (orphans.py)
            job_id = self._sbatch(run_dir.job_script, exclude, manifest.depends_on, run_dir)
            self._record_submission(run_dir, manifest, job_id, submitted_job_name(run_dir), exclude)
            _release(job_id)
        return job_id

    def cancel_orphans(self, grid: Path) -> str | None:
        return cancel_held_orphans(grid)

    def submit_all(self, items: list[tuple[RunDir, Manifest]]) -> list[str]:
        """One job per run, or, where the profile allows arrays, one array per group of runs with
        equal resources, excludes and dependencies (task ids ``<array>_<i>``)."""
        if self.cluster.max_array_size < 2:
            return super().submit_all(items)
        groups: dict[tuple[object, ...], list[int]] = {}
        for i, (run_dir, manifest) in enumerate(items):
            key = array_key(run_dir, manifest, self._excludes(run_dir, manifest))
            groups.setdefault(key, []).append(i)
        job_ids: list[str] = [""] * len(items)
        for indices in groups.values():
            for start in range(0, len(indices), self.cluster.max_array_size):
                chunk = indices[start : start + self.cluster.max_array_size]
                if len(chunk) == 1:
                    job_ids[chunk[0]] = self.submit(*items[chunk[0]])
                    continue
                for i, job_id in zip(chunk, self._submit_array([items[i] for i in chunk]), strict=True):
                    job_ids[i] = job_id
        return job_ids

    def _submit_array(self, items: list[tuple[RunDir, Manifest]]) -> list[str]:
        run_dirs = [rd for rd, _ in items]
        first_dir, first = items[0]
        name = array_name(first, run_dirs)
        script = first_dir.path.parent / f".{name}.sbatch"
        atomic_write_text(script, array_script(run_dirs, name))
        exclude = self._excludes(first_dir, first)
        job_ids = []
        with sigint.deferred():
            array_id = self._sbatch(script, exclude, first.depends_on, first_dir, array=len(items))
            for i, (run_dir, manifest) in enumerate(items):
                job_id = f"{array_id}_{i}"
                self._record_submission(run_dir, manifest, job_id, name, exclude)
                job_ids.append(job_id)
            _release(array_id)
        return job_ids

    def _excludes(self, run_dir: RunDir, manifest: Manifest) -> list[str]:
        return usable_excludes(
            manifest.exclude_nodes, int(sbatch_option(run_dir, "nodes") or 1), self.cluster.max_nodes
        )

    @staticmethod
    def _sbatch(script: Path, exclude: list[str], depends_on: list[str], run_dir: RunDir, array: int = 0) -> str:
        if not run_dir.path.is_dir():
            # sbatch accepts a job whose --output folder is missing; the job then fails with no log.
            raise BackendError(f"{run_dir.path}: the run directory (the job's --output folder) does not exist")
        # --hold: the job may not start before its manifest names it (the batch script's hooks
        # read and update that manifest); `_release` lets it go once it is recorded.
        cmd = ["sbatch", "--parsable", "--hold"]
        if array:
            cmd.append(f"--array=0-{array - 1}")
        if exclude:
            cmd.append(f"--exclude={','.join(exclude)}")
        if depends_on:
            # --kill-on-invalid-dep=yes in the script: a failed dependency cancels this job
            # instead of leaving it pending forever.
            cmd.append(f"--dependency=afterok:{':'.join(depends_on)}")
        cmd.append(str(script.absolute()))
        out = run_slurm(cmd).stdout
        job_id = parse_job_id(out)
        if job_id is None:
            raise BackendError(f"`{shlex.join(cmd)}` printed no job id: {out!r}")
        return job_id

    @staticmethod
    def _record_submission(
        run_dir: RunDir, manifest: Manifest, job_id: str, job_name: str | None, exclude: list[str]
    ) -> None:
        with manifest_lock(run_dir):
            manifest.mark_submitted(job_id, job_name=job_name, exclude=exclude)
            save_manifest(run_dir, manifest)

    def refresh(self, items: list[tuple[RunDir, Manifest]]) -> dict[str, RunState]:
        fresh = [(rd, load_manifest(rd) or m) for rd, m in items]
        ids = sorted({m.job_id for _, m in fresh if m.state.active and m.job_id})
        queue = self._squeue(ids)
        states: dict[str, RunState] = {}
        for run_dir, manifest in fresh:
            states[manifest.run_id] = self._state_of(run_dir, manifest, queue)
        return states

    def cancel(self, run_dir: RunDir, manifest: Manifest) -> None:
        """Stop the run with a checkpoint: USR1 to the batch shell first (the time-limit path), then
        the job's time limit shortened to now + the profile's grace, so that it ends even if the
        engine cannot stop; a pending job is simply cancelled.

        ``scancel`` alone sends TERM to every process at once: torchrun's agent then stops its
        workers within ~30 s and SLURM kills what is left after KillWait, a race a large model's
        checkpoint loses (docs/slurm.md, "How a job stops").
        """
        fresh = request_cancel(run_dir, manifest, "cancelled with `hpcllm cancel`")
        entry = self._squeue([fresh.job_id]).get(fresh.job_id) if fresh.job_id else None
        if entry is None or entry[0] != expected_job_name(run_dir, fresh) or not job_state(entry[1]).active:
            return  # not (or no longer) our job in the scheduler: its end is recorded with the request
        job_id = fresh.job_id or ""
        try:
            if job_state(entry[1]) == RunState.PENDING:
                run_slurm(["scancel", job_id])
                confirm_cancel(run_dir)  # the scheduler removed it: nothing runs for this run
                return
            run_slurm(["scancel", "--batch", "--signal=USR1", job_id])
        except BackendError:
            withdraw_cancel(run_dir)
            raise
        grace = fresh.signal_before_end_s or self.cluster.signal_before_end_s
        shorten_time_limit(job_id, grace)

    # --- state --------------------------------------------------------------------------------
    @staticmethod
    def _squeue(ids: list[str]) -> dict[str, tuple[str, str, str]]:
        """job id -> (name, STATE, reason) for the jobs SLURM still knows; one call for all."""
        if not ids:
            return {}
        proc = run_slurm(
            # --array: one line per array task, as "<array>_<task>", pending ones included.
            ["squeue", "--noheader", "--states=all", "--array", f"--jobs={','.join(ids)}", "--format=%i|%j|%T|%r"],
            check=False,
        )
        if proc.returncode != 0:
            if "Invalid job id" in proc.stderr:
                return {}  # every one of them has left the scheduler
            raise BackendError(
                f"`squeue --jobs={','.join(ids)}` failed (exit {proc.returncode}): {proc.stderr.strip()}"
            )
        queue = {}
        for line in proc.stdout.splitlines():
            parts = line.strip().split("|")
            if len(parts) == 4:
                queue[parts[0]] = (parts[1], parts[2], parts[3])
        return queue

    def _state_of(self, run_dir: RunDir, manifest: Manifest, queue: dict[str, tuple[str, str, str]]) -> RunState:
        if not manifest.state.active or not manifest.job_id:
            return manifest.state
        entry = queue.get(manifest.job_id)
        if entry is not None and entry[0] != expected_job_name(run_dir, manifest):
            entry = None  # a reused job id: this job belongs to someone else
        if entry is not None:
            _, slurm_state, reason = entry
            state = job_state(slurm_state)
            if state == RunState.PENDING and reason not in ("None", ""):
                self.pending_reasons[manifest.run_id] = held_hint(reason, manifest.job_id)
            if not state.active:
                detail = "" if reason in ("None", "") else f" ({reason})"
                return self._record_end(run_dir, state, f"SLURM job {manifest.job_id} ended {slurm_state}{detail}")
            return state
        state, end_reason = self._forgotten_job(run_dir, manifest)
        return self._record_end(run_dir, state, end_reason)

    def _forgotten_job(self, run_dir: RunDir, manifest: Manifest) -> tuple[RunState, str | None]:
        """The end of a job squeue no longer shows: sacct, the jobcomp log, then the run dir."""
        job_id = manifest.job_id or ""
        name = expected_job_name(run_dir, manifest) or ""
        proc = (
            run_slurm(
                ["sacct", "--noheader", "--parsable2", "-X", f"--jobs={job_id}", "--format=JobName,State"], check=False
            )
            if shutil.which("sacct")
            else None
        )
        if proc is not None and proc.returncode == 0:  # exit 1 where accounting storage is disabled
            for line in proc.stdout.splitlines():
                job_name, _, slurm_state = line.partition("|")
                if job_name == name and not job_state(slurm_state).active:
                    return job_state(slurm_state), f"SLURM job {job_id} ended {slurm_state} (sacct)"
        log = self._jobcomp_log()
        comp_state = jobcomp_state(log, job_id, name) if log else None
        if comp_state and not job_state(comp_state).active:
            return job_state(comp_state), f"SLURM job {job_id} ended {comp_state} ({log})"
        summary = read_json(run_dir.summary) or {}
        if summary.get("status") == SUMMARY_STATUS_COMPLETED:
            return RunState.COMPLETED, None
        return RunState.FAILED, (
            f"SLURM job {job_id} is gone and recorded no result (killed before its end hook ran?); "
            f"see {run_dir.log_file(job_id).name}"
        )

    def _jobcomp_log(self) -> Path | None:
        """The jobcomp/filetxt log, if the site keeps one (asked once per backend object)."""
        if not self._jobcomp_asked:
            self._jobcomp_asked = True
            values = {}
            for line in run_slurm(["scontrol", "show", "config"], check=False).stdout.splitlines():
                key, sep, value = line.partition("=")
                if sep:
                    values[key.strip()] = value.strip()
            loc = values.get("JobCompLoc", "")
            if values.get("JobCompType") == "jobcomp/filetxt" and loc:
                self._jobcomp = Path(loc)
        return self._jobcomp

    @staticmethod
    def _record_end(run_dir: RunDir, state: RunState, reason: str | None) -> RunState:
        """Record an end the job's own hooks did not write; never overwrite one they did.

        A batch script that stopped in its set-up (a module that does not load) says why in its
        log; that line is the reason, with SLURM's verdict after it. Returns the run's state: the
        end decided from the scheduler's verdict and the run's files (``runstate.decide_end``).
        """
        manifest = load_manifest(run_dir)
        if manifest is None or not manifest.state.active:
            return manifest.state if manifest is not None else state
        summary = read_json(run_dir.summary) or {}
        evidence = Evidence(summary.get("status"), scheduler=state, cancel_requested=manifest.cancel_requested)
        decided = decide_end(evidence).state or state
        with observer_lock(run_dir) as held:
            manifest = load_manifest(run_dir) if held else None
            if manifest is None or not manifest.state.active:
                return manifest.state if manifest is not None else decided  # the job's hooks recorded it
            setup_error = (
                script_error(run_dir, manifest.job_id) if state == RunState.FAILED and manifest.job_id else None
            )
            if decided == RunState.CANCELLED:
                reason = manifest.cancel_requested or reason
            elif setup_error and decided == RunState.FAILED:
                reason = f"{setup_error} ({reason})"
            if transition(manifest, decided, Actor.STATUS, reason):
                save_observed(run_dir, manifest)
        return decided

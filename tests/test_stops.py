"""How a job stops, without a scheduler: a plain scancel is told apart from a time limit or preemption
(the end hook must not requeue a job the user cancelled), and SLURM's durations are read right.
The real stops (hpcllm cancel, scancel, a lost TERM race) run in tests/test_slurm_site.py."""

from __future__ import annotations

import json

import pytest
from engine_support import running_slurm_run

from hpcllm.launch import jobhooks
from hpcllm.launch.backends.slurmtext import parse_duration
from hpcllm.launch.jobhooks import JobContext, on_end
from hpcllm.launch.manifest import RunState, load_manifest
from hpcllm.rundir import RunDir


@pytest.fixture
def run_dir(tmp_path, monkeypatch: pytest.MonkeyPatch) -> RunDir:
    rd = running_slurm_run(tmp_path / "run", nodes="n1", max_restarts=2)
    rd.summary.write_text(json.dumps({"status": "preempted", "steps_completed": 7}))
    # While a cancelled job's processes end, squeue says COMPLETING, not CANCELLED (SLURM 22.05).
    monkeypatch.setattr(jobhooks, "_slurm_state", lambda job_id: "COMPLETING")
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    return rd


def _log(rd: RunDir, line: str) -> None:
    rd.log_file("42").write_text(f"step 7/100 loss 1.2\n{line}\n[hpcllm] TERM received\n")


def test_a_plain_scancel_ends_the_run_cancelled_with_its_checkpoint(run_dir: RunDir) -> None:
    _log(run_dir, "slurmstepd-n1: error: *** JOB 42 ON n1 CANCELLED AT 2026-12-01T20:59:25 ***")
    assert on_end(JobContext(run_dir, "42", "n1", 0), 1, "TERM") == "cancel"
    manifest = load_manifest(run_dir)
    assert manifest is not None and manifest.state == RunState.CANCELLED and manifest.restarts == []
    assert manifest.reason == "cancelled (scancel); checkpoint at step 7"


@pytest.mark.parametrize("why", ["DUE TO TIME LIMIT", "DUE TO PREEMPTION"])
def test_a_term_from_a_time_limit_or_preemption_is_requeued(run_dir: RunDir, why: str) -> None:
    _log(run_dir, f"slurmstepd-n1: error: *** JOB 42 ON n1 CANCELLED AT 2026-12-01T20:59:25 {why} ***")
    assert on_end(JobContext(run_dir, "42", "n1", 0), 1, "TERM") == "requeue"


def test_another_jobs_cancel_line_does_not_count(run_dir: RunDir) -> None:
    _log(run_dir, "slurmstepd-n1: error: *** JOB 7 ON n1 CANCELLED AT 2026-12-01T20:59:25 ***")
    assert on_end(JobContext(run_dir, "42", "n1", 0), 1, "TERM") == "requeue"


@pytest.mark.parametrize(
    "text,seconds",
    [
        ("00:01:05", 65),
        ("05:30", 330),
        ("45", 45 * 60),
        ("1-02:00:00", 26 * 3600),
        ("1-02:30", 26 * 3600 + 1800),
        ("3-12", 84 * 3600),
        ("UNLIMITED", None),
        ("Partition_Limit", None),
    ],
)
def test_slurm_durations(text: str, seconds: int | None) -> None:
    assert parse_duration(text) == seconds

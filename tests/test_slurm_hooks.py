"""The SLURM pieces that need no scheduler: the batch script's end/start decisions, state mapping,
and the rendered script itself. The real-scheduler tests are in test_slurm_cluster.py."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from engine_support import running_slurm_run

from hpcllm.config.cluster import load_cluster
from hpcllm.config.experiment import load_experiment
from hpcllm.errors import BackendError
from hpcllm.launch.arrays import array_key, array_name, array_script
from hpcllm.launch.backends.slurm import SlurmBackend
from hpcllm.launch.backends.slurmtext import (
    job_state,
    jobcomp_state,
    parse_job_id,
    submitted_job_name,
    usable_excludes,
)
from hpcllm.launch.jobhooks import JobContext, on_end, on_requeue_failed, on_start
from hpcllm.launch.manifest import Manifest, Restart, RunState, load_manifest, save_manifest
from hpcllm.launch.render import render_job
from hpcllm.plan.expand import expand_experiment
from hpcllm.rundir import EXIT_PREEMPTED, RunDir

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def run_dir(tmp_path: Path) -> RunDir:
    return running_slurm_run(tmp_path / "run", nodes="n[1-2]", max_restarts=1)


def ctx(run_dir: RunDir, restart_count: int = 0) -> JobContext:
    return JobContext(run_dir=run_dir, job_id="42", nodelist="n[1-2]", restart_count=restart_count)


def write_attempt(run_dir: RunDir, status: str, last_step: int) -> None:
    """What an engine attempt leaves: metrics up to ``last_step`` and a summary with ``status``."""
    run_dir.metrics.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, last_step + 1)))
    run_dir.summary.write_text(json.dumps({"status": status}))


def manifest(run_dir: RunDir) -> Manifest:
    m = load_manifest(run_dir)
    assert m is not None
    return m


def test_completed_attempt_ends_the_run(run_dir: RunDir) -> None:
    write_attempt(run_dir, "completed", 5)
    assert on_end(ctx(run_dir), 0, "") == "exit 0"
    assert manifest(run_dir).state == RunState.COMPLETED


def test_preempted_attempt_within_budget_is_requeued_and_recorded(run_dir: RunDir) -> None:
    write_attempt(run_dir, "preempted", 7)
    assert on_end(ctx(run_dir), 1, "USR1") == "requeue"
    m = manifest(run_dir)
    assert m.state == RunState.PENDING
    assert [(r.reason, r.last_step, r.job_id, r.nodes) for r in m.restarts] == [
        ("time limit near (USR1)", 7, "42", "n[1-2]")
    ]


def test_preempted_attempt_past_budget_fails_with_the_reason(run_dir: RunDir) -> None:
    write_attempt(run_dir, "preempted", 7)
    assert on_end(ctx(run_dir, restart_count=1), 1, "USR1") == f"exit {EXIT_PREEMPTED}"
    m = manifest(run_dir)
    assert m.state == RunState.FAILED and m.restarts == []
    assert m.reason == "restart budget exhausted (1) after time limit near (USR1)"


def test_summary_of_an_earlier_attempt_is_not_this_attempts_result(run_dir: RunDir) -> None:
    write_attempt(run_dir, "preempted", 3)
    m = manifest(run_dir)
    m.nodes = None
    save_manifest(run_dir, m)
    assert on_start(ctx(run_dir)) is True
    assert not run_dir.summary.exists()
    # The engine then died without a summary (killed): a failure, not a second "preempted".
    assert on_end(ctx(run_dir), 1, "") == "exit 1"
    m = manifest(run_dir)
    assert m.state == RunState.FAILED and "summary status: none written" in (m.reason or "")


def test_start_past_the_budget_does_not_launch(run_dir: RunDir) -> None:
    m = manifest(run_dir)
    m.nodes = None  # requeued before an attempt recorded its nodes: no scheduler query needed
    m.restarts = [Restart(time="t", reason="time limit near (USR1)", job_id="42")]
    save_manifest(run_dir, m)
    assert on_start(ctx(run_dir, restart_count=2)) is False
    m = manifest(run_dir)
    assert m.state == RunState.FAILED
    assert m.reason and m.reason.startswith("restart budget exhausted (1)")
    assert len(m.restarts) == 2 and "requeued by SLURM" in m.restarts[-1].reason


def test_first_start_records_job_and_nodes(run_dir: RunDir) -> None:
    m = manifest(run_dir)
    m.state, m.nodes = RunState.PENDING, None
    save_manifest(run_dir, m)
    assert on_start(JobContext(run_dir, "42", "n[3-4]", 0)) is True
    m = manifest(run_dir)
    assert (m.state, m.job_id, m.nodes, m.restarts) == (RunState.RUNNING, "42", "n[3-4]", [])


@pytest.mark.parametrize(
    ("slurm", "ours"),
    [
        ("PENDING", RunState.PENDING),
        ("REQUEUED", RunState.PENDING),
        ("RUNNING", RunState.RUNNING),
        ("COMPLETING", RunState.RUNNING),
        ("COMPLETED", RunState.COMPLETED),
        ("CANCELLED by 0", RunState.CANCELLED),
        ("NODE_FAIL", RunState.FAILED),
        ("TIMEOUT", RunState.FAILED),
    ],
)
def test_slurm_states_map_to_run_states(slurm: str, ours: RunState) -> None:
    assert job_state(slurm) == ours


def test_rendered_slurm_script_traps_first_and_is_valid_bash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HPCLLM_CLUSTERS_DIR", str(REPO / "clusters"))
    cluster = load_cluster("localslurm")
    spec = expand_experiment(load_experiment(REPO / "experiments" / "smoke.yaml"), cluster, "smoke.yaml")[0]
    rd = RunDir.of(tmp_path, "smoke", cluster.name, spec.run_id)
    text = render_job(spec, cluster, rd, account=None)
    (tmp_path / "job.sh").write_text(text)
    subprocess.run(["bash", "-n", str(tmp_path / "job.sh")], check=True)
    for line in (
        "#SBATCH --requeue",
        "#SBATCH --signal=B:USR1@30",
        "#SBATCH --kill-on-invalid-dep=yes",
        "#SBATCH --partition=debug",
    ):
        assert line in text
    body = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    assert body[:2] == ["set -uo pipefail", 'STOP_SIGNAL=""']  # the trap is set before any other work
    assert text.index("trap 'stop_requested USR1' USR1") < text.index("RUN_DIR=")
    assert "-m hpcllm.launch.jobhooks start" in text and "scontrol requeue" in text
    assert submitted_job_name(rd) is None
    rd.path.mkdir(parents=True)
    rd.job_script.write_text(text)
    assert submitted_job_name(rd) == f"hpcllm-smoke-{spec.run_id}"


def test_local_render_has_no_slurm_hooks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HPCLLM_CLUSTERS_DIR", str(REPO / "clusters"))
    cluster = load_cluster("local")
    spec = expand_experiment(load_experiment(REPO / "experiments" / "smoke.yaml"), cluster, "smoke.yaml")[0]
    text = render_job(spec, cluster, RunDir.of(tmp_path, "smoke", "local", spec.run_id), account=None)
    (tmp_path / "job.sh").write_text(text)
    subprocess.run(["bash", "-n", str(tmp_path / "job.sh")], check=True)
    assert "jobhooks" not in text and "scontrol" not in text


@pytest.mark.parametrize(
    ("out", "job_id"),
    [("1234\n", "1234"), ("1234;cluster_a\n", "1234"), ("", None), ("Submitted batch job 12\n", None)],
)
def test_sbatch_parsable_output(out: str, job_id: str | None) -> None:
    assert parse_job_id(out) == job_id


def test_excludes_never_leave_too_few_nodes() -> None:
    assert usable_excludes(["n1", "n2", "n3"], nodes=2, partition_nodes=4) == ["n2", "n3"]  # the newest
    assert usable_excludes(["n1"], nodes=2, partition_nodes=4) == ["n1"]
    assert usable_excludes(["n1"], nodes=4, partition_nodes=4) == []


def test_jobcomp_log_gives_the_last_state_of_the_named_job(tmp_path: Path) -> None:
    log = tmp_path / "jobcomp.txt"
    log.write_text(
        "JobId=7 UserId=root(0) GroupId=root(0) Name=hpcllm-x JobState=REQUEUED Partition=debug\n"
        "JobId=7 UserId=root(0) GroupId=root(0) Name=other JobState=FAILED Partition=debug\n"
        "JobId=77 UserId=root(0) GroupId=root(0) Name=hpcllm-x JobState=FAILED Partition=debug\n"
        "JobId=7 UserId=root(0) GroupId=root(0) Name=hpcllm-x JobState=COMPLETED Partition=debug\n"
    )
    assert jobcomp_state(log, "7", "hpcllm-x") == "COMPLETED"
    assert jobcomp_state(log, "8", "hpcllm-x") is None
    assert jobcomp_state(tmp_path / "missing.txt", "7", "hpcllm-x") is None


def test_submit_refuses_a_missing_output_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HPCLLM_CLUSTERS_DIR", str(REPO / "clusters"))
    backend = SlurmBackend(load_cluster("localslurm"))
    m = Manifest(run_id="r", experiment="e", cluster="localslurm", backend="slurm")
    with pytest.raises(BackendError, match="does not exist"):
        backend.submit(RunDir(tmp_path / "nowhere"), m)


def test_array_script_shares_resources_and_execs_each_runs_script(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HPCLLM_CLUSTERS_DIR", str(REPO / "clusters"))
    cluster = load_cluster("localslurm")
    specs = expand_experiment(load_experiment(REPO / "experiments" / "smoke.yaml"), cluster, "smoke.yaml")
    run_dirs = []
    for spec in specs:
        rd = RunDir.of(tmp_path, "smoke", cluster.name, spec.run_id)
        rd.path.mkdir(parents=True)
        rd.job_script.write_text(render_job(spec, cluster, rd, account=None))
        run_dirs.append(rd)
    m = Manifest(run_id=specs[0].run_id, experiment="smoke", cluster="localslurm", backend="slurm")
    # The smoke grid differs in ranks per node, not in what it asks SLURM for: one array fits both.
    assert array_key(run_dirs[0], m, []) == array_key(run_dirs[1], m, [])
    assert array_key(run_dirs[0], m, []) != array_key(run_dirs[0], m, ["n2"])
    text = array_script(run_dirs, array_name(m, run_dirs))
    (tmp_path / "array.sh").write_text(text)
    subprocess.run(["bash", "-n", str(tmp_path / "array.sh")], check=True)
    assert text.count("#SBATCH --job-name=") == 1 and "#SBATCH --signal=B:USR1@30" in text
    assert all(str(rd.path.absolute()) in text for rd in run_dirs)
    assert 'exec bash "$RUN/job.sbatch"' in text


def test_requeue_refused_because_slurm_already_requeued_keeps_the_restart(run_dir: RunDir) -> None:
    # A node went DOWN: SLURM signalled the job (the engine checkpointed) and requeued it itself,
    # so the script's own `scontrol requeue` is refused. That is not a failure.
    write_attempt(run_dir, "preempted", 9)
    assert on_end(ctx(run_dir), 1, "USR1") == "requeue"
    on_requeue_failed(ctx(run_dir), "Job is pending execution for job 42")
    m = manifest(run_dir)
    assert m.state == RunState.PENDING and [r.last_step for r in m.restarts] == [9]


def test_jobcomp_log_finds_array_tasks_by_array_and_task_id(tmp_path: Path) -> None:
    """jobcomp/filetxt logs a task under its own JobId, with ArrayJobId/ArrayTaskId (format seen here)."""
    log = tmp_path / "jobcomp.txt"
    log.write_text(
        "JobId=29 UserId=root(0) GroupId=root(0) Name=arr JobState=TIMEOUT Partition=debug "
        "ArrayJobId=28 ArrayTaskId=0 DerivedExitCode=0:0\n"
        "JobId=28 UserId=root(0) GroupId=root(0) Name=arr JobState=CANCELLED Partition=debug "
        "ArrayJobId=28 ArrayTaskId=2 DerivedExitCode=0:0\n"
    )
    assert jobcomp_state(log, "28_0", "arr") == "TIMEOUT"
    assert jobcomp_state(log, "28_2", "arr") == "CANCELLED"
    assert jobcomp_state(log, "28_1", "arr") is None
    assert jobcomp_state(log, "28_0", "someone-else") is None

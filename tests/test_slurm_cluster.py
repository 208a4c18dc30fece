"""The SLURM backend against a real scheduler: the local cluster of ``scripts/local-slurm.sh``.

Nothing is mocked: jobs go through sbatch, run the real engine under srun + torchrun (c10d
rendezvous, gloo) on the logical nodes n1..n4, and nodes are really set DOWN. Timings are never
asserted exactly: SLURM sends ``--signal`` up to ~60 s early and enforces limits ~30 s late.
Waiting is polling of the scheduler and the run directory, with a deadline.

Run: ``sudo scripts/local-slurm.sh up && pytest -m slurm tests/test_slurm_cluster.py``. Without the
cluster these tests skip by hand and fail under ``make test`` (tests/slurm_gate.py).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from engine_support import losses_checking_reruns, uninterrupted_losses
from slurm_gate import PARTITION, PARTITION_NODES

from hpcllm.collect.table import COLUMNS, build_table, collect_table, completed_records
from hpcllm.errors import BackendError, ConfigError
from hpcllm.launch.manifest import Manifest, RunState, load_manifest, save_manifest
from hpcllm.launch.orchestrate import SubmitResult, submit_experiment
from hpcllm.launch.runstatus import cancel_run, collect_status
from hpcllm.launch.slurmcmd import hostnames, parse_scontrol_record
from hpcllm.rundir import RunDir

pytestmark = [pytest.mark.slurm, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[1]


# The fixtures `demo_data` (module scope) and `env` come from tests/slurm_fixtures.py.


def experiment(
    tmp_path: Path,
    data: Path,
    name: str,
    *,
    steps: int,
    nodes: int = 1,
    time_limit: str = "00:05:00",
    every: int = 10,
    max_restarts: int | None = None,
    grid: dict[str, list[Any]] | None = None,
) -> Path:
    """The smoke experiment's training config (tiny model, CPU) with this test's resources."""
    smoke = yaml.safe_load((REPO / "experiments" / "smoke.yaml").read_text())
    training = smoke["training"]
    training["data"]["path"] = str(data)
    training["train"]["steps"] = steps
    training["checkpoint"] = {"every_steps": every}
    resources: dict[str, Any] = {"nodes": nodes, "time": time_limit}
    if max_restarts is not None:
        resources["max_restarts"] = max_restarts
    doc = {"name": name, "resources": resources, "training": training, "grid": grid or {}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str, poll_s: float = 0.5) -> Any:
    """Poll ``condition`` until it returns something truthy; fail with ``what`` after the deadline."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll_s)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")


def finished(results: Path, run_dirs: list[RunDir]) -> dict[str, str] | None:
    """run id -> state once none of ``run_dirs`` is pending or running (states via the backend)."""
    wanted = {rd.path.absolute() for rd in run_dirs}
    states = {s.run_dir.run_id: s.state for s in collect_status(results) if s.run_dir.path.absolute() in wanted}
    return states if states and all(s not in ("pending", "running") for s in states.values()) else None


def metrics(run_dir: RunDir) -> list[dict[str, Any]]:
    """The training lines (smoke.yaml evaluates: its eval lines carry eval_loss, not loss)."""
    lines = [json.loads(line) for line in run_dir.metrics.read_text().splitlines() if line.strip()]
    return [r for r in lines if "loss" in r]


def last_step(run_dir: RunDir) -> int:
    return metrics(run_dir)[-1]["step"] if run_dir.metrics.exists() and run_dir.metrics.stat().st_size else 0


def scontrol_job(job_id: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True).stdout
    return parse_scontrol_record(out)


def engine_pids(run_dir: RunDir) -> list[int]:
    """Processes still running this run's engine (an orphaned torchrun worker would show here)."""
    needle = str(run_dir.config.absolute()).encode()
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and needle in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def assert_no_leftover_processes(run_dir: RunDir) -> None:
    wait_for(lambda: not engine_pids(run_dir), 60, f"the engine processes of {run_dir.run_id} to exit")


def only_run(result: SubmitResult) -> RunDir:
    assert len(result.runs) == 1, result.runs
    return result.runs[0].run_dir


def manifest_of(run_dir: RunDir) -> Manifest:
    manifest = load_manifest(run_dir)
    assert manifest is not None
    return manifest


def test_two_concurrent_two_node_runs_collect_like_local_and_resubmit_skips(
    env: Path, demo_data: Path, tmp_path: Path
) -> None:
    # Two 2-node jobs at once on one host: their c10d rendezvous must not meet (a port per job).
    exp = experiment(tmp_path, demo_data, "grid", steps=30, nodes=2, grid={"train.micro_batch_size": [4, 8]})
    result = submit_experiment(exp, "localslurm", env)
    assert [r.action for r in result.runs] == ["submitted", "submitted"]
    run_dirs = [r.run_dir for r in result.runs]
    states = wait_for(lambda: finished(env, run_dirs), 300, "the two 2-node runs")
    assert set(states.values()) == {"completed"}, {rd.run_id: manifest_of(rd).reason for rd in run_dirs}

    # Whether the two jobs overlapped is the scheduler's choice (other jobs share the cluster): what is
    # ours is that they could: each job's rendezvous has its own endpoint (below), and jobs that did
    # run at once ran on disjoint nodes.
    jobs = [scontrol_job(manifest_of(rd).job_id or "") for rd in run_dirs]
    if max(j["StartTime"] for j in jobs) < min(j["EndTime"] for j in jobs):
        nodes = [set(hostnames(manifest_of(rd).nodes or "")) for rd in run_dirs]
        assert not nodes[0] & nodes[1], nodes
    endpoints = set()
    for rd in run_dirs:
        assert len(hostnames(manifest_of(rd).nodes or "")) == 2
        log = rd.log_file(manifest_of(rd).job_id or "").read_text()
        assert "2 rank(s)" in log  # one torchrun agent per node joined the rendezvous
        endpoints |= {line.split()[-1] for line in log.splitlines() if "rendezvous at" in line}
    assert len(endpoints) == 2

    table = collect_table(env)
    assert list(table.columns) == COLUMNS and len(table) == 2  # the seed's table, as on `local`
    assert sorted(table["MBS"]) == [4, 8] and set(table["#GPUs"]) == {2}
    default = build_table(completed_records(env))  # the default columns add the eval loss the runs report
    assert "Eval Loss" in default.headers and all(row["eval_loss"] is not None for row in default.rows)

    again = submit_experiment(exp, "localslurm", env)
    assert [(r.action, r.detail) for r in again.runs] == [("skipped", "completed")] * 2


def test_node_down_requeues_and_resumes_to_the_uninterrupted_loss(env: Path, demo_data: Path, tmp_path: Path) -> None:
    steps, every = 90, 20
    exp = experiment(tmp_path, demo_data, "nodefail", steps=steps, nodes=2, every=every, max_restarts=2)
    reference_root = tmp_path / "reference"
    run = only_run(submit_experiment(exp, "localslurm", env))
    reference = only_run(submit_experiment(exp, "localslurm", reference_root))

    wait_for(lambda: last_step(run) >= every + 5, 180, f"run to pass step {every + 5}")
    nodes = hostnames(manifest_of(run).nodes or "")
    victim = nodes[-1]
    subprocess.run(["scontrol", "update", f"nodename={victim}", "state=down", "reason=hpcllm-test"], check=True)
    try:
        wait_for(lambda: manifest_of(run).restarts, 120, "the job to restart after the node failure")
        states = wait_for(lambda: finished(env, [run]), 300, "the requeued run to finish")
        wait_for(lambda: finished(reference_root, [reference]), 300, "the reference run to finish")
    finally:
        subprocess.run(["scontrol", "update", f"nodename={victim}", "state=resume"], check=False)
    assert states == {run.run_id: "completed"}, manifest_of(run).reason

    manifest = manifest_of(run)
    restart = manifest.restarts[0]
    assert victim in restart.failed_nodes and "node failure" in restart.reason
    assert restart.nodes and victim in hostnames(restart.nodes) and restart.last_step
    assert victim in manifest.exclude_nodes  # a resubmission avoids it

    records = metrics(run)
    first_time = [r["step"] for r in records if not r["rerun"]]
    assert first_time == list(range(1, steps + 1))  # every step once; repeats are marked rerun
    # Re-run steps repeat the first attempt's loss, and every step has the uninterrupted run's.
    assert losses_checking_reruns(records) == losses_checking_reruns(metrics(reference))
    assert any(r["restart"] >= 1 for r in records)
    assert all(r["step"] > every for r in records if r["rerun"])  # resumed from a checkpoint, not step 0

    assert_no_leftover_processes(run)  # nothing of the attempt on the downed node survives
    final = json.loads(run.summary.read_text())
    assert final["final_loss"] == json.loads(reference.summary.read_text())["final_loss"]
    assert final["eval_loss"] == json.loads(reference.summary.read_text())["eval_loss"]  # eval across a requeue

    # --retry-failed resubmits a failed run with the failed node excluded.
    manifest.state = RunState.FAILED
    save_manifest(run, manifest)
    skipped = only_run(submit_experiment(exp, "localslurm", env))
    assert manifest_of(skipped).state == RunState.FAILED  # not resubmitted without --retry-failed
    result = submit_experiment(exp, "localslurm", env, retry_failed=True)
    job = result.runs[0].job_id
    assert result.runs[0].action == "submitted" and job
    assert scontrol_job(job).get("ExcNodeList") == victim
    cancel_run(env, run.run_id)


def test_time_limit_signal_checkpoints_requeues_until_the_budget_is_spent(
    env: Path, demo_data: Path, tmp_path: Path
) -> None:
    # 1 minute with signal_before_end_s 30: SLURM sends B:USR1 at its first time-limit check.
    exp = experiment(tmp_path, demo_data, "timelimit", steps=100_000, time_limit="00:01:00", every=1000, max_restarts=1)
    doc = yaml.safe_load(exp.read_text())
    doc["training"]["schedule"] = {"name": "constant"}  # lr independent of train.steps: see the reference
    exp.write_text(yaml.safe_dump(doc, sort_keys=False))
    run = only_run(submit_experiment(exp, "localslurm", env))
    assert "#SBATCH --signal=B:USR1@30" in run.job_script.read_text()
    states = wait_for(lambda: finished(env, [run]), 240, "the run to stop twice at its time limit")
    manifest = manifest_of(run)
    assert states == {run.run_id: "failed"}
    assert manifest.reason and "restart budget exhausted (1)" in manifest.reason and "USR1" in manifest.reason
    assert [r.reason for r in manifest.restarts] == ["time limit near (USR1)"]
    records = metrics(run)
    assert {r["restart"] for r in records} == {0, 1}
    resumed_from = min(r["step"] for r in records if r["restart"] == 1) - 1
    assert resumed_from == manifest.restarts[0].last_step  # the stop checkpoint, not step 0
    assert json.loads(run.summary.read_text())["status"] == "preempted"
    assert_no_leftover_processes(run)
    # Every step once, in order, with the losses of one uninterrupted run past the resume.
    assert [r["step"] for r in records if not r["rerun"]] == list(range(1, records[-1]["step"] + 1))
    got = losses_checking_reruns(records)
    upto = min(resumed_from + 10, max(got))
    assert {s: got[s] for s in range(1, upto + 1)} == uninterrupted_losses(run.config, upto, tmp_path)


def test_usr1_to_the_batch_shell_requeues_and_the_run_completes(env: Path, demo_data: Path, tmp_path: Path) -> None:
    steps = 80
    exp = experiment(tmp_path, demo_data, "usr1", steps=steps, every=1000, max_restarts=2)
    run = only_run(submit_experiment(exp, "localslurm", env))
    wait_for(lambda: last_step(run) >= 10, 120, "run to pass step 10")
    job = manifest_of(run).job_id or ""
    # What --signal=B:USR1 does at the time limit, now: signal the batch shell only.
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], check=True)
    states = wait_for(lambda: finished(env, [run]), 240, "the requeued run to finish")
    assert states == {run.run_id: "completed"}, manifest_of(run).reason
    manifest = manifest_of(run)
    assert [r.reason for r in manifest.restarts] == ["time limit near (USR1)"]
    assert manifest.job_id == job  # requeued, not resubmitted
    records = metrics(run)
    assert [r["step"] for r in records if not r["rerun"]] == list(range(1, steps + 1))
    assert not any(r["rerun"] for r in records)  # stopped right after a forced checkpoint: nothing lost
    assert_no_leftover_processes(run)


def test_cancel_stops_the_job_without_requeue(env: Path, demo_data: Path, tmp_path: Path) -> None:
    exp = experiment(tmp_path, demo_data, "cancel", steps=100_000, every=1000)
    run = only_run(submit_experiment(exp, "localslurm", env))
    wait_for(lambda: last_step(run) >= 2, 120, "run to start training")
    cancel_run(env, run.run_id)
    job = manifest_of(run).job_id or ""
    wait_for(lambda: scontrol_job(job).get("JobState", "CANCELLED") == "CANCELLED", 60, "job to be cancelled")
    assert finished(env, [run]) == {run.run_id: "cancelled"}
    assert manifest_of(run).restarts == []
    assert_no_leftover_processes(run)
    with pytest.raises(BackendError, match="is cancelled, not pending or running"):
        cancel_run(env, run.run_id)


def test_dependency_waits_for_its_job_and_a_failed_one_cancels_it(env: Path, demo_data: Path, tmp_path: Path) -> None:
    # A held job ahead of the chain: the second run is certainly still pending when status is asked
    # (a race with the first run's end, otherwise), and the order is released by the test, not the clock.
    gate = subprocess.run(
        ["sbatch", "--parsable", "--hold", f"--partition={PARTITION}", "--time=1", "--wrap", "true"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    first_exp = experiment(tmp_path, demo_data, "first", steps=15)
    first = only_run(submit_experiment(first_exp, "localslurm", env, after=[gate]))
    first_job = manifest_of(first).job_id or ""
    second_exp = experiment(tmp_path, demo_data, "second", steps=5)
    second = only_run(submit_experiment(second_exp, "localslurm", env, after=[first_job]))
    assert scontrol_job(manifest_of(second).job_id or "").get("Dependency", "").startswith(f"afterok:{first_job}")
    # `hpcllm status` says why the second run has not started yet.
    wait_for(
        lambda: any(s.run_dir.path == second.path and s.waiting_for == "Dependency" for s in collect_status(env)),
        120,
        "status to show the pending reason 'Dependency'",
    )
    assert manifest_of(first).state is RunState.PENDING  # the gate still holds the chain
    subprocess.run(["scontrol", "release", gate], check=True)
    states = wait_for(lambda: finished(env, [first, second]), 240, "both runs to finish")
    assert set(states.values()) == {"completed"}
    second_job = scontrol_job(manifest_of(second).job_id or "")
    assert second_job["StartTime"] >= scontrol_job(first_job)["EndTime"]

    # A dependency that can never be met cancels the job (no job pending forever).
    doomed = submit_experiment(experiment(tmp_path, demo_data, "doomed", steps=100_000), "localslurm", env)
    waiting = submit_experiment(
        experiment(tmp_path, demo_data, "waiting", steps=5), "localslurm", env, after=[doomed.runs[0].job_id or ""]
    )
    cancel_run(env, doomed.runs[0].run_dir.run_id)
    states = wait_for(lambda: finished(env, [waiting.runs[0].run_dir]), 120, "the dependent job to be dropped")
    assert list(states.values()) == ["cancelled"]
    assert "Dependency" in (manifest_of(waiting.runs[0].run_dir).reason or "")


def test_sbatch_rejection_shows_command_and_stderr_and_marks_the_manifest(
    env: Path, demo_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    profile = yaml.safe_load((REPO / "clusters" / "localslurm.yaml").read_text())
    profile.update(name="badpartition", partition="no_such_partition")
    clusters = tmp_path / "clusters"
    clusters.mkdir()
    (clusters / "badpartition.yaml").write_text(yaml.safe_dump(profile))
    monkeypatch.setenv("HPCLLM_CLUSTERS_DIR", str(clusters))
    exp = experiment(tmp_path, demo_data, "rejected", steps=5)
    with pytest.raises(
        BackendError, match=r"`sbatch --parsable .*job\.sbatch` failed \(exit 1\): .*[Ii]nvalid partition"
    ):
        submit_experiment(exp, "badpartition", env)
    run_dir = next(RunDir(p.parent) for p in env.rglob("run.yaml"))
    manifest = manifest_of(run_dir)
    assert manifest.state == RunState.SUBMIT_FAILED and "no_such_partition" in (manifest.error or "")


def test_a_reused_job_id_is_not_mistaken_for_the_run(env: Path, demo_data: Path, tmp_path: Path) -> None:
    # After a cluster restart job ids start again: the id in a manifest may now be someone else's job.
    exp = experiment(tmp_path, demo_data, "reused", steps=5)
    run = only_run(submit_experiment(exp, "localslurm", env, dry_run=True))
    other = subprocess.run(
        ["sbatch", "--parsable", "--job-name=someone-else", "--output=/dev/null", "--wrap=sleep 120"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    try:
        manifest = manifest_of(run)
        manifest.state, manifest.job_id = RunState.RUNNING, other
        save_manifest(run, manifest)
        assert finished(env, [run]) == {run.run_id: "failed"}
        assert "is gone and recorded no result" in (manifest_of(run).reason or "")
        manifest.state = RunState.RUNNING  # cancelling the run must leave the other job alone
        save_manifest(run, manifest)
        cancel_run(env, run.run_id)
        assert scontrol_job(other)["JobState"] in ("PENDING", "RUNNING")
    finally:
        subprocess.run(["scancel", other], check=False)


def test_more_nodes_than_the_partition_is_rejected_before_sbatch(env: Path, demo_data: Path, tmp_path: Path) -> None:
    exp = experiment(tmp_path, demo_data, "toobig", steps=5, nodes=PARTITION_NODES + 1)
    with pytest.raises(
        ConfigError, match=r"resources.nodes: 5 nodes requested, but cluster 'localslurm' has at most 4"
    ):
        submit_experiment(exp, "localslurm", env)
    assert not env.exists()


def array_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``arrayslurm``: the local cluster's profile with job arrays of at most 4 tasks."""
    profile = yaml.safe_load((REPO / "clusters" / "localslurm.yaml").read_text())
    profile.update(name="arrayslurm", max_array_size=4)
    clusters = tmp_path / "clusters"
    clusters.mkdir()
    (clusters / "arrayslurm.yaml").write_text(yaml.safe_dump(profile))
    monkeypatch.setenv("HPCLLM_CLUSTERS_DIR", str(clusters))


def test_grid_as_job_array_with_per_task_requeue(
    env: Path, demo_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    array_profile(tmp_path, monkeypatch)
    steps = 60
    exp = experiment(
        tmp_path, demo_data, "array", steps=steps, every=1000, max_restarts=1, grid={"train.micro_batch_size": [4, 8]}
    )
    result = submit_experiment(exp, "arrayslurm", env)
    array_id = (result.runs[0].job_id or "").split("_")[0]
    assert [r.job_id for r in result.runs] == [f"{array_id}_0", f"{array_id}_1"]
    run0, run1 = (r.run_dir for r in result.runs)
    wait_for(lambda: last_step(run1) >= 5, 120, "array task 1 to train")
    subprocess.run(["scancel", "--batch", "--signal=USR1", f"{array_id}_1"], check=True)  # this task only
    states = wait_for(lambda: finished(env, [run0, run1]), 240, "both array tasks")
    assert set(states.values()) == {"completed"}, {rd.run_id: manifest_of(rd).reason for rd in (run0, run1)}
    assert manifest_of(run0).restarts == []
    assert [r.reason for r in manifest_of(run1).restarts] == ["time limit near (USR1)"]
    assert [r["step"] for r in metrics(run1) if not r["rerun"]] == list(range(1, steps + 1))
    for i, rd in enumerate((run0, run1)):
        assert manifest_of(rd).job_id == f"{array_id}_{i}"
        assert "[hpcllm] job" in rd.log_file(f"{array_id}_{i}").read_text()  # the run's own log
    assert len(collect_table(env)) == 2


def test_search_trials_run_as_a_job_array(
    env: Path, demo_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A search's trials are ordinary runs: one sbatch --array for the rung, then scored from their logs."""
    from hpcllm.collect.best import best_table
    from hpcllm.tune.search import advance

    array_profile(tmp_path, monkeypatch)
    path = experiment(tmp_path, demo_data, "lrgrid", steps=10, every=1000)
    doc = yaml.safe_load(path.read_text())
    doc["search"] = {"method": "grid", "parameters": {"optim.lr": [3.0e-3, 3.0e-2]}}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))

    first = advance(path, "arrayslurm", env)
    run_dirs = [RunDir(first.folder / t.run_id) for t in first.state.trials]
    array_id = (manifest_of(run_dirs[0]).job_id or "").split("_")[0]
    assert [manifest_of(rd).job_id for rd in run_dirs] == [f"{array_id}_0", f"{array_id}_1"]
    states = wait_for(lambda: finished(env, run_dirs), 300, "both trials")
    assert set(states.values()) == {"completed"}, {rd.run_id: manifest_of(rd).reason for rd in run_dirs}
    done = advance(path, "arrayslurm", env)
    assert done.state.complete and not done.submitted
    scores = {t.params["optim.lr"]: t.scores["10"] for t in done.state.trials}
    for t, rd in zip(done.state.trials, run_dirs, strict=True):
        assert scores[t.params["optim.lr"]] == json.loads(rd.summary.read_text())["eval_loss"]
    (best,) = best_table(env).to_dict(orient="records")
    assert best["optim.lr"] == min(scores, key=lambda lr: scores[lr])

"""Site readiness on the local SLURM (task/affinity, KillWait 30 s as on the sites): CPU binding of the
launched step, a module that does not load, how a job stops (checkpoint guaranteed or not), and
`hpcllm doctor` against a live scheduler.

Run: ``eval "$(scripts/local-slurm.sh env)" && pytest -m slurm tests/test_slurm_site.py``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_slurm_cluster import (  # the local cluster's helpers (its fixtures: tests/slurm_fixtures.py)
    REPO,
    assert_no_leftover_processes,
    engine_pids,
    experiment,
    finished,
    last_step,
    manifest_of,
    metrics,
    only_run,
    scontrol_job,
    wait_for,
)
from typer.testing import CliRunner

from hpcllm.cli import app
from hpcllm.config.cluster import load_cluster
from hpcllm.engine.checkpoint import read_latest_pointer
from hpcllm.launch.backends.slurmtext import parse_duration
from hpcllm.launch.orchestrate import submit_experiment
from hpcllm.launch.runstatus import cancel_run
from hpcllm.rundir import RunDir
from hpcllm.site.doctor import FAIL, OK, SKIP, WARN, Check, run_doctor

pytestmark = [pytest.mark.slurm, pytest.mark.integration]
runner = CliRunner()


def profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, **overrides: Any) -> str:
    """A copy of clusters/localslurm.yaml with ``overrides``, found through $HPCLLM_CLUSTERS_DIR."""
    doc = yaml.safe_load((REPO / "clusters" / "localslurm.yaml").read_text())
    doc.update(name=name, **overrides)
    folder = tmp_path / "clusters"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(doc))
    for other in (REPO / "clusters").glob("*.yaml"):
        if not (folder / other.name).exists():
            (folder / other.name).write_text(other.read_text())
    monkeypatch.setenv("HPCLLM_CLUSTERS_DIR", str(folder))
    return name


def latest_checkpoint_step(run: RunDir) -> int | None:
    latest = read_latest_pointer(run.checkpoints)
    return None if latest is None else int(latest.name.split("_")[1])


# --- 1. CPU binding -----------------------------------------------------------------------------


def test_every_rank_holds_the_cpus_its_profile_asked_for(
    env: Path, demo_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NCCL_DEBUG", raising=False)
    run = only_run(submit_experiment(experiment(tmp_path, demo_data, "cpus", steps=3, nodes=2), "localslurm", env))
    states = wait_for(lambda: finished(env, [run]), 240, "the 2-node run")
    assert states == {run.run_id: "completed"}, manifest_of(run).reason
    (record,) = [json.loads(line) for line in run.runtime.read_text().splitlines()]
    asked = load_cluster("localslurm").cpus_per_node
    assert len(record["ranks"]) == 2 and len(record["nodes"]) == 2  # one rank on each of two logical nodes
    for rank in record["ranks"]:
        # task/affinity binds the step to what it asked for; a step without --cpus-per-task would
        # be bound to one core here (SLURM 22.05 does not pass the job's value on to srun).
        assert len(rank["cpus"]) == asked, rank
        assert rank["omp_num_threads"] == "1" and rank["torch_threads"] == 1  # the profile's env: wins
    assert record["env"]["NCCL_DEBUG"] == "WARN"  # the job's default when nobody asks for INFO


# --- 6. modules -----------------------------------------------------------------------------------


def test_a_module_that_does_not_load_fails_the_job_and_status_says_why(
    env: Path, demo_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "module").write_text(
        '#!/bin/sh\n[ "$1" = load ] && { echo "Lmod: unknown module $2" >&2; exit 1; }\nexit 0\n'
    )
    (bin_dir / "module").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")  # jobs inherit it (--export=ALL)
    name = profile(tmp_path, monkeypatch, "modsite", modules=["nosuch/1.0"])
    run = only_run(submit_experiment(experiment(tmp_path, demo_data, "mods", steps=3), name, env))
    assert wait_for(lambda: finished(env, [run]), 120, "the job to fail") == {run.run_id: "failed"}
    reason = manifest_of(run).reason or ""
    assert reason.startswith("module load nosuch/1.0 failed; check the name with: module avail nosuch"), reason
    assert not run.metrics.exists()  # nothing was launched


# --- 5. how a job stops ----------------------------------------------------------------------------


def test_hpcllm_cancel_checkpoints_first_then_ends_the_job(env: Path, demo_data: Path, tmp_path: Path) -> None:
    run = only_run(
        submit_experiment(
            experiment(tmp_path, demo_data, "cancel1", steps=100_000, every=100_000, time_limit="00:10:00"),
            "localslurm",
            env,
        )
    )
    wait_for(lambda: last_step(run) >= 3, 120, "run to train")
    job = manifest_of(run).job_id or ""
    cancel_run(env, run.run_id)
    # The end is guaranteed even if the engine never stopped: the limit is now run time + the grace.
    limit, run_time = (parse_duration(scontrol_job(job)[k]) for k in ("TimeLimit", "RunTime"))
    assert limit is not None and run_time is not None and run_time <= limit < 10 * 60
    assert limit <= run_time + load_cluster("localslurm").signal_before_end_s + 60
    wait_for(lambda: scontrol_job(job).get("JobState") == "CANCELLED", 120, "the job to end as CANCELLED")
    assert finished(env, [run]) == {run.run_id: "cancelled"}
    stopped_at = metrics(run)[-1]["step"]
    assert latest_checkpoint_step(run) == stopped_at  # nothing lost: saved where it stopped
    assert manifest_of(run).reason == f"cancelled with `hpcllm cancel`; checkpoint at step {stopped_at}"
    log = run.log_file(job).read_text()
    assert "USR1 received" in log and "[hpcllm] next: cancel" in log  # asked first, ended by its own script
    assert manifest_of(run).restarts == []
    assert_no_leftover_processes(run)


def test_plain_scancel_terms_every_rank_and_they_save_when_they_can(env: Path, demo_data: Path, tmp_path: Path) -> None:
    run = only_run(
        submit_experiment(experiment(tmp_path, demo_data, "scancel", steps=100_000, every=100_000), "localslurm", env)
    )
    wait_for(lambda: last_step(run) >= 3, 120, "run to train")
    job = manifest_of(run).job_id or ""
    subprocess.run(["scancel", job], check=True)  # TERM to every process, KILL after KillWait (30 s)
    assert wait_for(lambda: finished(env, [run]), 120, "the job to end") == {run.run_id: "cancelled"}
    # A tiny model's step and checkpoint fit in KillWait, so the ranks' own TERM handling saved it.
    assert latest_checkpoint_step(run) == metrics(run)[-1]["step"]
    assert "TERM received" in run.log_file(job).read_text()
    assert_no_leftover_processes(run)


def rank_pids(run: RunDir) -> list[int]:
    """The engine's ranks (torchrun's workers), not the agent or srun."""
    return [
        pid
        for pid in engine_pids(run)
        if b"torch.distributed.run" not in (cmd := Path(f"/proc/{pid}/cmdline").read_bytes())
        and not cmd.startswith(b"srun")
    ]


def test_a_stop_with_no_time_to_save_falls_back_to_the_last_periodic_checkpoint(
    env: Path, demo_data: Path, tmp_path: Path
) -> None:
    """What a TERM race the ranks lose comes to (a 28B step and save longer than KillWait), as a rank
    the OOM killer takes: KILL with no time to save; the run keeps only its periodic checkpoint.

    The KILL comes from here, to the ranks, as the kernel's would: SLURM cannot send one alone
    (``scancel --signal=KILL`` is a cancel: SIGCONT, TERM, KILL after KillWait)."""
    every = 5
    run = only_run(
        submit_experiment(experiment(tmp_path, demo_data, "nosave", steps=100_000, every=every), "localslurm", env)
    )
    wait_for(lambda: (latest_checkpoint_step(run) or 0) >= every and rank_pids(run), 120, "a periodic checkpoint")
    ranks = rank_pids(run)

    def pause() -> tuple[int, int | None]:
        """Hold the ranks still, so that what they saved is what they will have saved."""
        for pid in ranks:
            os.kill(pid, signal.SIGSTOP)
        return last_step(run), latest_checkpoint_step(run)

    stopped_at, periodic = pause()
    while stopped_at % every == 0:  # at a save step: go on to one that saves nothing
        for pid in ranks:
            os.kill(pid, signal.SIGCONT)
        wait_for(lambda stopped_at=stopped_at: last_step(run) > stopped_at, 60, "the run to go on")
        stopped_at, periodic = pause()
    for pid in ranks:
        os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: finished(env, [run]), 120, "the job to end") == {run.run_id: "failed"}
    assert "summary status: none written" in (manifest_of(run).reason or "")
    assert periodic is not None and periodic % every == 0 and periodic < stopped_at
    assert latest_checkpoint_step(run) == periodic  # steps after it are lost: the resume re-runs them
    assert_no_leftover_processes(run)


# --- 7. hpcllm doctor -----------------------------------------------------------------------------


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {f"{c.area}:{c.name}": c for c in checks}


def test_doctor_passes_the_local_profile_and_names_what_it_could_not_check(
    env: Path, demo_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = profile(
        tmp_path,
        monkeypatch,
        "site",
        qos={"normal": {"max_time": "01:00:00", "max_nodes": 4}},
        default_qos="normal",
        paths={"data": str(demo_data.parent), "results": str(tmp_path / "res")},
    )
    exp = experiment(tmp_path, demo_data, "probe", steps=5, grid={"resources.nodes": [1, 2]})
    result = runner.invoke(app, ["doctor", "--cluster", name, "--experiment", str(exp)], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    checks = by_name(run_doctor(load_cluster(name), profile_file=name, experiment=exp))
    assert checks["partition:debug"].status == OK and checks["partition:nodes"].status == OK
    # The local cluster keeps accounting (slurmdbd): QoS normal is read from its database, no limits there.
    assert checks["qos:normal"].status == OK and "limits as the profile says" in checks["qos:normal"].detail
    points = [c for c in checks.values() if c.area == "point"]
    assert len(points) == 2 and all(c.status == OK and "sbatch --test-only" in c.detail for c in points)
    assert checks["storage:paths.data"].status == OK and checks["storage:paths.results"].status == OK
    assert checks["python:python"].status == OK and "torch" in checks["python:python"].detail
    assert "no accounting" not in result.output


def test_doctor_fails_a_wrong_partition_node_count_and_cores_and_cannot_vouch_for_a_qos(
    env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = profile(tmp_path, monkeypatch, "wrongpart", partition="gpu_prod")
    checks = by_name(run_doctor(load_cluster(wrong), profile_file="wrongpart.yaml"))
    part = checks["partition:gpu_prod"]
    assert part.status == FAIL and "SLURM has no partition 'gpu_prod' (partitions: debug)" in part.detail
    assert part.fix == "set partition: to one of them in wrongpart.yaml"

    big = profile(
        tmp_path, monkeypatch, "bignodes", max_nodes=8, cpus_per_node=4, qos={"no_such_qos": {"max_time": "01:00:00"}}
    )
    checks = by_name(run_doctor(load_cluster(big), profile_file="bignodes.yaml"))
    nodes, cpus, qos = checks["partition:nodes"], checks["partition:cpus per node"], checks["qos:no_such_qos"]
    assert nodes.status == FAIL and "max_nodes is 8, but the partition has 4 nodes" in nodes.detail
    assert nodes.fix == "set max_nodes: 4 in bignodes.yaml"
    assert cpus.status == FAIL and "cpus_per_node is 4, but nodes have 2 CPUs" in cpus.detail
    # The QoS table comes from the scheduler's database (sacctmgr), not from the profile.
    assert qos.status == FAIL and "no QoS 'no_such_qos' on this cluster (QoS: hpcllm_small, hpcllm_wide, normal)" in (
        qos.detail
    )
    result = runner.invoke(app, ["doctor", "--cluster", big], env={"COLUMNS": "250"})
    assert result.exit_code == 1 and "fail" in result.output


def test_doctor_gpu_job_launches_like_a_run_and_all_reduces_over_two_nodes(env: Path, tmp_path: Path) -> None:
    checks = run_doctor(
        load_cluster("localslurm"),
        profile_file="localslurm.yaml",
        results_root=tmp_path / "res",
        gpu=True,
        gpu_timeout_s=300,
    )
    job = [c for c in checks if c.area == "job"]
    assert job[0].status == OK and job[0].name.startswith("site check (job "), job[0]
    nodes = [c for c in job if c.name.endswith(" GPUs")]
    assert len(nodes) == 2 and all(c.status == SKIP for c in nodes)  # two nodes reported; CPU profile
    (reduce,) = [c for c in job if c.name == "all-reduce"]
    assert reduce.status == OK and "2 ranks over gloo (cpu): sum right" in reduce.detail, reduce
    assert not any(c.status in (FAIL, WARN) for c in checks), [c for c in checks if c.status in (FAIL, WARN)]

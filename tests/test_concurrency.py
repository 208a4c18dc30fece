"""Several people, one results folder: real processes at the same moment, no update lost.

Processes are lined up on a gate (they report ready, then wait for a shared lock the test holds),
so that they really start together; nothing here waits a fixed time.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from hpcllm.errors import HpcllmError
from hpcllm.launch import locks
from hpcllm.launch.manifest import Manifest, RunState, load_manifest, save_manifest, update_manifest
from hpcllm.launch.runstatus import collect_status
from hpcllm.rundir import RunDir, find_run_dirs

REPO = Path(__file__).resolve().parents[1]

# Imports first (slow), then "ready", then wait at the gate, then run the given code.
_GATED = """
import fcntl, sys
{imports}
print("ready", flush=True)
with open(sys.argv[1]) as gate:
    fcntl.flock(gate, fcntl.LOCK_SH)
{body}
"""


def start_together(
    gate: Path,
    scripts: list[tuple[str, str, list[str]]],
    env: dict[str, str] | None = None,
) -> list[subprocess.CompletedProcess[str]]:
    """Run one process per (imports, body, args) so that their bodies start at the same moment."""
    gate.touch()
    with open(gate) as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        procs = []
        for imports, body, args in scripts:
            code = _GATED.format(imports=imports, body=body)
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", code, str(gate), *args],
                    cwd=REPO,
                    text=True,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
                )
            )
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline() == "ready\n", proc.communicate()
    # The gate is open: every body starts now.
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return results


def run_dir_with_manifest(tmp_path: Path) -> RunDir:
    rd = RunDir(tmp_path / "results" / "e" / "local" / "r1")
    rd.path.mkdir(parents=True)
    save_manifest(rd, Manifest(run_id="r1", experiment="e", cluster="local", backend="local"))
    return rd


def test_concurrent_read_modify_writes_lose_no_update(tmp_path: Path) -> None:
    """4 processes x 25 appends to one manifest: every append survives (without the lock, writers
    that read the same version overwrite each other's append)."""
    rd = run_dir_with_manifest(tmp_path)
    imports = (
        "from hpcllm.launch.manifest import Restart, now, update_manifest\n"
        "from pathlib import Path\nfrom hpcllm.rundir import RunDir"
    )
    body = (
        "for i in range(25):\n"
        "    with update_manifest(RunDir(Path(sys.argv[2]))) as m:\n"
        "        m.restarts.append(Restart(time=now(), reason=f'{sys.argv[3]}-{i}'))"
    )
    results = start_together(tmp_path / "gate", [(imports, body, [str(rd.path), f"w{w}"]) for w in range(4)])
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    reasons = [r.reason for r in load_manifest(rd).restarts]
    assert sorted(reasons) == sorted(f"w{w}-{i}" for w in range(4) for i in range(25))


def _lock_is_free(lock_file: Path) -> bool:
    """Asked from another process: could it take the lock right now?"""
    code = (
        "import fcntl, os, sys\nfd = os.open(sys.argv[1], os.O_RDWR)\n"
        "try:\n    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept OSError:\n    sys.exit(1)\n"
    )
    return subprocess.run([sys.executable, "-c", code, str(lock_file)]).returncode == 0


def test_nested_use_in_one_process_keeps_the_lock_until_the_outer_block_ends(tmp_path: Path) -> None:
    """POSIX locks are per process and die with any close of the file: the inner block must neither
    deadlock nor release the outer one's lock."""
    rd = run_dir_with_manifest(tmp_path)
    with update_manifest(rd) as outer:
        with update_manifest(rd) as inner:
            inner.reason = "inner"
        assert not _lock_is_free(rd.lock_file)
        outer.state = RunState.FAILED
    assert _lock_is_free(rd.lock_file)
    assert load_manifest(rd).state == RunState.FAILED


def test_a_file_system_without_locks_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(locks.fcntl, "lockf", refuse)
    with (
        pytest.raises(HpcllmError, match=r"\.manifest\.lock: the file system refuses POSIX locks .*-o flock"),
        update_manifest(run_dir_with_manifest(tmp_path)),
    ):
        pass


# --- N concurrent `hpcllm submit` of one grid ----------------------------------------------------

SUBMIT_IMPORTS = "from hpcllm.cli import app"
SUBMIT_BODY = "sys.argv = ['hpcllm', *sys.argv[2:]]\napp()"
SUBMITTERS = 4


def grid_experiment(tmp_path: Path, store: Path, name: str) -> Path:
    doc = {
        "name": name,
        "resources": {"nodes": 1, "time": "00:10:00"},
        "training": {
            "device": "cpu",
            "model": {"preset": "tiny", "n_layers": 1, "seq_len": 64},
            "train": {"steps": 2, "summary_warmup_steps": 0},
            "parallel": {"precision": "FP_32"},
            "data": {"path": str(store), "num_workers": 0},
            "checkpoint": {"at_end": False},
        },
        "grid": {"train.micro_batch_size": [2, 4], "resources.gpus_per_node": [1]},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def submit_together(
    tmp_path: Path, exp: Path, cluster: str, results: Path, env: dict[str, str] | None = None
) -> list[subprocess.CompletedProcess[str]]:
    args = ["submit", str(exp), "--cluster", cluster, "--results", str(results)]
    results_ = start_together(
        tmp_path / "gate", [(SUBMIT_IMPORTS, SUBMIT_BODY, args)] * SUBMITTERS, env={"COLUMNS": "300", **(env or {})}
    )
    assert all(r.returncode == 0 for r in results_), [r.stdout + r.stderr for r in results_]
    return results_


def wait_until_finished(results: Path, timeout_s: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        states = {s.run_dir.run_id: s.state for s in collect_status(results)}
        if states and all(s not in ("pending", "running") for s in states.values()):
            return states
        time.sleep(0.5)
    pytest.fail(f"runs under {results} not finished after {timeout_s:.0f} s")


def assert_each_run_submitted_once(outputs: list[subprocess.CompletedProcess[str]], runs: list[RunDir]) -> None:
    # Exactly one submitter submitted each run; the others saw it queued and skipped it.
    assert sum(r.stdout.count(" submitted ") for r in outputs) == len(runs), [r.stdout for r in outputs]
    assert sum(r.stdout.count("skipped already") for r in outputs) == (SUBMITTERS - 1) * len(runs)
    for rd in runs:
        manifest = load_manifest(rd)
        assert manifest is not None and len(manifest.submissions) == 1, manifest


def assert_one_job_ran(runs: list[RunDir]) -> None:
    for rd in runs:
        assert [p.name for p in rd.log_files()] == [f"slurm-{load_manifest(rd).job_id}.out"]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hpcllm.data.demo import write_demo

    out = tmp_path_factory.mktemp("data") / "demo"
    write_demo(out, overwrite=True, with_debian_docs=False)
    return out


@pytest.mark.integration
def test_concurrent_submits_on_the_local_backend_submit_each_run_once(tmp_path: Path, store: Path) -> None:
    results = tmp_path / "results"
    outputs = submit_together(
        tmp_path,
        grid_experiment(tmp_path, store, "conc"),
        "local",
        results,
        env={"HPCLLM_CLUSTERS_DIR": str(REPO / "clusters")},
    )
    runs = find_run_dirs(results)
    assert len(runs) == 2
    assert_each_run_submitted_once(outputs, runs)
    assert set(wait_until_finished(results, 600).values()) == {"completed"}
    assert_one_job_ran(runs)
    for rd in runs:  # the runner's own records (pid, exit code) survived the concurrent refreshes
        manifest = load_manifest(rd)
        assert manifest.exit_code == 0 and manifest.runner_pid is not None
        assert json.loads(rd.summary.read_text())["steps_completed"] == 2


@pytest.mark.slurm
@pytest.mark.integration
def test_concurrent_submits_on_slurm_submit_each_run_once(
    tmp_path: Path, store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from slurm_gate import slurm_env

    from hpcllm.launch.backends.slurmtext import submitted_job_name

    results = tmp_path / "results"
    env = slurm_env()
    env = {
        "SLURM_CONF": env.get("SLURM_CONF", ""),
        "HPCLLM_CLUSTERS_DIR": str(REPO / "clusters"),
        # Jobs inherit the submitting environment: this interpreter and this checkout.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    outputs = submit_together(tmp_path, grid_experiment(tmp_path, store, "concslurm"), "localslurm", results, env)
    runs = find_run_dirs(results)
    assert len(runs) == 2
    assert_each_run_submitted_once(outputs, runs)
    for rd in runs:  # the scheduler's own view: one job of this run's name, ever
        name = submitted_job_name(rd)
        jobs = subprocess.run(
            ["squeue", "--noheader", "--states=all", f"--name={name}", "--format=%i"],
            capture_output=True,
            text=True,
            env={**os.environ, **env},
            check=True,
        ).stdout.split()
        assert len(jobs) == 1, jobs
    monkeypatch.setenv("SLURM_CONF", env["SLURM_CONF"])  # for the status queries below
    assert set(wait_until_finished(results, 600).values()) == {"completed"}
    assert_one_job_ran(runs)


def test_status_records_a_vanished_local_runner_as_failed(tmp_path: Path) -> None:
    from hpcllm.config.cluster import load_cluster
    from hpcllm.launch.backends.local import LocalBackend

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # reaped: its pid names no process now
    rd = run_dir_with_manifest(tmp_path)
    with update_manifest(rd) as m:
        m.state, m.job_id, m.runner_pid = RunState.RUNNING, "1", gone.pid
    backend = LocalBackend(load_cluster(str(REPO / "clusters" / "local.yaml")))
    assert backend.refresh([(rd, load_manifest(rd))]) == {"r1": RunState.FAILED}
    assert load_manifest(rd).reason == "local runner exited without recording a result"
    with update_manifest(rd) as m:  # a live runner is left alone
        m.state, m.runner_pid = RunState.RUNNING, os.getpid()
    assert backend.refresh([(rd, load_manifest(rd))]) == {"r1": RunState.RUNNING}

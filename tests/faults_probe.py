"""Real faults against the local backend, run by tests/test_faults.py as PID 1 of its own PID and mount
namespaces (``unshare --pid --fork --mount-proc --mount``): every process it signals is one it
started, and every mount it makes dies with the namespace (it also unmounts in ``finally``).

The job is a small bash script that plays the engine's part of the run contract (``summary.json``,
exit code, TERM = checkpoint and stop with 75), so that the runner, liveness, cancel and status are
the real ones and every scenario is decided by files the test controls, not by timing.

Prints ``ok <scenario>`` per scenario; any failed check raises (non-zero exit).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from hpcllm.config.cluster import load_cluster
from hpcllm.errors import StorageWriteError
from hpcllm.fsutil import append_line, atomic_write_text
from hpcllm.launch import procid
from hpcllm.launch.backends.local import LocalBackend, queue_lock_path
from hpcllm.launch.manifest import Manifest, RunState, load_manifest, save_manifest
from hpcllm.rundir import RunDir

REPO = Path(__file__).resolve().parents[1]
BACKEND = LocalBackend(load_cluster(str(REPO / "clusters" / "local.yaml")))

# The job: counts its starts, writes what the mode file says, waits for "go" (or TERM: checkpoint).
JOB = """#!/bin/bash
echo "$$" >> "$CTL/starts-$(basename "$PWD")"
mode=$(cat mode)
if [ "$mode" = completes-first ]; then
  echo '{"status": "completed"}' > summary.json
  trap 'exit 143' TERM
else
  trap 'echo "{\\"status\\": \\"preempted\\"}" > summary.json; exit 75' TERM
fi
while [ ! -e "$CTL/go-$(basename "$PWD")" ]; do sleep 0.05; done
echo '{"status": "completed"}' > summary.json
"""


def wait_for(what: str, check, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def reap() -> None:
    """PID 1 of the namespace inherits orphans (a killed runner's job): reap the ones that ended."""
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


def make_run(root: Path, name: str, mode: str) -> RunDir:
    rd = RunDir(root / "exp" / "local" / name)
    rd.path.mkdir(parents=True)
    atomic_write_text(rd.job_script, JOB, executable=True)
    (rd.path / "mode").write_text(mode)
    save_manifest(rd, Manifest(run_id=name, experiment="exp", cluster="local", backend="local"))
    return rd


def new_run(root: Path, name: str, mode: str) -> RunDir:
    rd = make_run(root, name, mode)
    BACKEND.submit(rd, load_manifest(rd))
    return rd


def processes_in(folder: Path) -> list[int]:
    """The live processes whose working folder is ``folder`` (a job's, whoever started it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if Path(os.readlink(entry / "cwd")) == folder.absolute():
                    found.append(int(entry.name))
            except OSError:
                pass  # gone, or a zombie (no cwd)
    return found


def starts(ctl: Path, rd: RunDir) -> int:
    path = ctl / f"starts-{rd.run_id}"
    return len(path.read_text().split()) if path.exists() else 0


def state(rd: RunDir) -> RunState:
    reap()
    return BACKEND.refresh([(rd, load_manifest(rd))])[rd.run_id]


def runner_killed_engine_lives(root: Path, ctl: Path) -> None:
    """SIGKILL the runner while its job trains: still running, never started twice, cancel reaches
    the job's verified group, and the end is recorded from what the job did."""
    rd = new_run(root, "killed", "plain")
    wait_for("the job to start", lambda: starts(ctl, rd) == 1)
    wait_for("the job to be recorded", lambda: load_manifest(rd).job_process is not None)
    m = load_manifest(rd)
    assert m.runner is not None and m.runner.pid > 1 and m.job_process.pgid == m.job_process.pid
    os.kill(m.runner.pid, signal.SIGKILL)
    wait_for("the runner to die", lambda: not procid.alive(load_manifest(rd).runner) or reap())
    assert state(rd) == RunState.RUNNING, load_manifest(rd)
    assert load_manifest(rd).state == RunState.RUNNING  # not recorded failed
    # A rerun (a new submission of the same run) must not start a second job.
    m = load_manifest(rd)
    m.state = RunState.FAILED  # as an older hpcllm would have recorded it
    save_manifest(rd, m)
    BACKEND.submit(rd, load_manifest(rd))
    wait_for("the second runner to give way", lambda: not procid.alive(load_manifest(rd).runner) or reap())
    assert starts(ctl, rd) == 1, "a second engine started"
    assert state(rd) == RunState.RUNNING and "not started again" in (load_manifest(rd).reason or "")
    BACKEND.cancel(rd, load_manifest(rd))  # the runner is dead: the job's group gets the TERM
    wait_for("the job to stop", lambda: not procid.group_alive(load_manifest(rd).job_process) or reap())
    assert state(rd) == RunState.CANCELLED
    m = load_manifest(rd)
    assert m.reason == "cancelled with `hpcllm cancel`", m.reason
    assert json.loads(rd.summary.read_text())["status"] == "preempted"
    print("ok runner-killed")


# The local runner, killed by SIGKILL at the worst moment: after it started the job, before it recorded it.
KILLED_BEFORE_RECORDING = (
    "import os, signal, sys\n"
    "from hpcllm.launch import local_runner\n"
    "local_runner.Runner._record_job = lambda self: os.kill(os.getpid(), signal.SIGKILL)\n"
    "sys.exit(local_runner.main(sys.argv[1:]))\n"
)


def runner_killed_before_recording(root: Path, ctl: Path) -> None:
    """SIGKILL of the runner between starting its job and recording it: the job never runs (nothing
    runs that nobody recorded), status ends the run failed, and a rerun completes it with one engine."""
    rd = make_run(root, "unrecorded", "plain")
    m = load_manifest(rd)
    m.mark_submitted("7")
    save_manifest(rd, m)
    runner = subprocess.Popen(
        [sys.executable, "-c", KILLED_BEFORE_RECORDING, str(rd.path.absolute()), str(queue_lock_path(rd))],
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    assert runner.wait(timeout=60) == -signal.SIGKILL
    wait_for("the unrecorded job to exit", lambda: not processes_in(rd.path) or reap(), timeout=20)
    assert starts(ctl, rd) == 0, "the job script ran although the runner never recorded it"
    m = load_manifest(rd)
    assert m.job_process is None and m.state == RunState.RUNNING, m
    assert state(rd) == RunState.FAILED
    assert "before its job started" in (load_manifest(rd).reason or ""), load_manifest(rd).reason
    BACKEND.submit(rd, load_manifest(rd))  # what `submit --retry-failed` does for a failed run
    wait_for("the rerun's job to start", lambda: starts(ctl, rd) == 1)
    (ctl / f"go-{rd.run_id}").touch()
    wait_for("the rerun to end", lambda: not load_manifest(rd).state.active)
    assert load_manifest(rd).state == RunState.COMPLETED and starts(ctl, rd) == 1
    assert not processes_in(rd.path)
    print("ok runner-killed-before-recording")


def cancel_races_completion(root: Path, ctl: Path) -> None:
    """The job has written its completed summary when the cancel arrives: the run is completed."""
    rd = new_run(root, "race", "completes-first")
    wait_for("the summary", lambda: rd.summary.exists() and starts(ctl, rd) == 1)
    wait_for("the job to be recorded", lambda: load_manifest(rd).job_process is not None)
    BACKEND.cancel(rd, load_manifest(rd))
    wait_for("the runner's end", lambda: not load_manifest(rd).state.active)
    m = load_manifest(rd)
    assert m.state == RunState.COMPLETED and m.cancel_requested is None, m
    print("ok cancel-races-completion")


def unverifiable_processes_are_not_signalled(root: Path) -> None:
    """A stored pid of -1, 0, 1 or a reused pid is never signalled (a ``kill(-1)`` would reach the
    bystander below); cancel records the run cancelled only because nothing of it runs."""
    rd = RunDir(root / "exp" / "local" / "forged")
    rd.path.mkdir(parents=True)
    bystander = subprocess.Popen(["sleep", "600"], start_new_session=True)
    real = procid.identify(bystander.pid)
    assert real is not None
    for pid in (-1, 0, 1, bystander.pid):
        forged = real.model_copy(update={"pid": pid, "pgid": pid, "start_time": real.start_time + 1})
        assert procid.signal_group(forged, signal.SIGTERM) is not None
        assert procid.signal_process(forged, signal.SIGTERM) is not None
        m = Manifest(run_id="forged", experiment="exp", cluster="local", backend="local", state="running")
        m.job_process = forged
        save_manifest(rd, m)
        BACKEND.cancel(rd, load_manifest(rd))
        assert load_manifest(rd).state == RunState.CANCELLED
    assert bystander.poll() is None, "a process that is not the run's was signalled"
    assert procid.signal_group(real, signal.SIGTERM) is None  # the verified one is
    assert bystander.wait() == -signal.SIGTERM
    print("ok forged-pids")


def read_only_mid_run(root: Path, ctl: Path) -> None:
    """The results folder turns read-only while the job runs; the runner cannot record the end;
    status shows the end it observes (not "running"), and records it once the folder is writable."""
    rd = new_run(root, "ro", "plain")
    wait_for("the job to start", lambda: starts(ctl, rd) == 1)
    wait_for("the job to be recorded", lambda: load_manifest(rd).job_process is not None)
    # A read-only bind mount over the folder: new opens fail with EROFS, as after `remount,ro`
    # (which the kernel refuses while the job's log is open for writing).
    subprocess.run(["mount", "--bind", str(root), str(root)], check=True)
    subprocess.run(["mount", "-o", "remount,bind,ro", str(root)], check=True)
    try:
        (ctl / f"go-{rd.run_id}").touch()  # the job ends (its cwd, opened before, still takes its summary)
        wait_for("the runner to exit", lambda: not procid.alive(load_manifest(rd).runner) or reap())
        wait_for("the job to exit", lambda: not procid.group_alive(load_manifest(rd).job_process) or reap())
        assert load_manifest(rd).state == RunState.RUNNING  # what the file says (the runner could not write)...
        assert state(rd) == RunState.COMPLETED, state(rd)  # ...is not what status shows: the job's end
        assert load_manifest(rd).state == RunState.RUNNING  # nothing could be recorded, and no error
    finally:
        subprocess.run(["umount", str(root)], check=True)  # the writable folder below again
    assert state(rd) == RunState.COMPLETED and load_manifest(rd).state == RunState.COMPLETED
    print("ok read-only")


def fill(filler: Path) -> Path:
    """Write ``filler`` 4 KiB at a time until its file system is full; returns it."""
    try:
        with open(filler, "wb", buffering=0) as fh:
            while True:
                fh.write(b"x" * 4096)
    except OSError:
        pass  # full
    return filler


def full_disk(root: Path) -> None:
    """A full file system: one line naming the path and the free space, no temp file, no torn line."""
    log = root / "metrics.jsonl"
    append_line(log, json.dumps({"step": 1}))
    filler = fill(root / "filler")
    try:
        append_line(log, json.dumps({"step": 2, "pad": "y" * 20000}))
        raise AssertionError("a write to a full disk succeeded")
    except StorageWriteError as exc:
        assert str(log) in str(exc) and "free there" in str(exc) and "\n" not in str(exc), exc
    assert log.read_text() == '{"step": 1}\n', "a torn line was left"
    try:
        atomic_write_text(root / "exp" / "job.sbatch", "z" * 50000)
        raise AssertionError("a write to a full disk succeeded")
    except StorageWriteError as exc:
        assert "job.sbatch" in str(exc)
    assert not list((root / "exp").glob(".job.sbatch.*.tmp"))
    cli_on_a_full_disk(root)
    filler.unlink()
    # A torn line left by a writer killed mid-line: the next line starts fresh.
    with open(log, "a") as fh:
        fh.write('{"step": 2, "lo')
    append_line(log, json.dumps({"step": 3}))
    lines = log.read_text().splitlines()
    assert lines[-1] == '{"step": 3}' and lines[-2] == '{"step": 2, "lo', lines
    print("ok full-disk")


def cli_on_a_full_disk(root: Path) -> None:
    """`submit --dry-run`, `data prepare`, `report` and `collect -o` on a full disk: exit 2, one line
    naming the path and the free space, and no temp file or hidden temp folder left behind."""
    text = root.parent / "input.txt"  # off the full disk
    text.write_text("some text to tokenize\n" * 20000)
    done = root.parent / "done" / "exp" / "local" / "r1"  # a completed run for collect (off the full disk)
    done.mkdir(parents=True)
    (done / "run.yaml").write_text("run_id: r1\n")
    summary = {"status": "completed", "world_size": 1, "global_batch_size": 8, "seq_len": 64, "n_params": 1e6}
    (done / "summary.json").write_text(json.dumps({**summary, "samples_per_s": 10.0, "gpu_type": "A100"}))
    commands = {
        "submit": [
            *("submit", "experiments/scaling_2.7b.yaml", "--cluster", "leonardo", "--dry-run"),
            *("--results", str(root / "dry"), "--no-memory-check"),
        ],
        "prepare": ["data", "prepare", "-i", str(text), "-o", str(root / "store"), "--workers", "1"],
        "report": ["report", "-r", str(root.parent / "plain"), "-o", str(root / "report.html")],
        "collect": ["collect", "-r", str(done.parents[2]), "--format", "csv", "-o", str(root / "table.csv")],
    }
    for name, args in commands.items():
        proc = subprocess.run(
            [str(Path(sys.executable).parent / "hpcllm"), *args],
            capture_output=True,
            text=True,
            cwd=REPO,
            env={**os.environ, "COLUMNS": "400", "HPCLLM_CLUSTERS_DIR": str(REPO / "clusters")},
        )
        errors = [line for line in proc.stderr.splitlines() + proc.stdout.splitlines() if "free there" in line]
        assert proc.returncode == 2 and len(errors) == 1, (name, proc.returncode, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
        assert not [p for p in root.rglob("*.tmp")], (name, list(root.rglob("*.tmp")))
    print("ok full-disk-cli")


def training_on_a_full_disk(root: Path, base: Path) -> None:
    """The real engine fills the disk with metrics lines: it stops, no torn line is left, and once
    there is room again a rerun appends whole lines after the old ones and completes."""
    from engine_support import make_store, run_engine, write_run

    store = make_store(base / "store")  # off the small disk
    config = write_run(root / "train", store, train={"steps": 60, "micro_batch_size": 2, "summary_warmup_steps": 1})
    filler = fill(root / "filler")
    os.truncate(filler, max(filler.stat().st_size - 6 * 4096, 0))  # room for ~80 lines of the 60*2 needed
    full = run_engine(config, timeout=240, env={"HPCLLM_LOCK_TIMEOUT": "5"})
    assert full.returncode != 0, full.stdout[-2000:] + full.stderr[-2000:]
    metrics = root / "train" / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    assert lines and all(json.loads(line) for line in lines), "a torn line was left"
    assert len(lines) < 60
    filler.unlink()
    again = run_engine(config, timeout=240)
    assert again.returncode == 0, again.stderr[-3000:]
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert records[-1]["step"] == 60 and len(records) == len(lines) + 60
    print("ok training-full-disk")


def main() -> int:
    assert os.getpid() == 1, "run me in a PID namespace (unshare --pid --fork --mount-proc --mount)"
    base = Path(sys.argv[1])
    ctl = base / "ctl"
    ctl.mkdir(parents=True)
    os.environ["CTL"] = str(ctl)
    plain = base / "plain"
    runner_killed_engine_lives(plain / "a", ctl)
    cancel_races_completion(plain / "b", ctl)
    unverifiable_processes_are_not_signalled(plain / "c")
    runner_killed_before_recording(plain / "d", ctl)
    small = base / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(small)], check=True)
    try:
        read_only_mid_run(small, ctl)
        full_disk(small)
        training_on_a_full_disk(small, base)
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Faults and races (issue 21): the run-state machine, process identity, locks with owners and
timeouts, full and read-only disks. The end-to-end part runs tests/faults_probe.py as PID 1 of its
own PID and mount namespaces, so nothing outside it can be signalled or mounted over."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpcllm.errors import HpcllmError, LockBusy
from hpcllm.fsutil import append_line
from hpcllm.launch import locks, procid
from hpcllm.launch.leftovers import remove_leftovers
from hpcllm.launch.manifest import Manifest, RunState
from hpcllm.launch.runstate import Actor, End, Evidence, decide_end, transition
from hpcllm.rundir import RunDir

REPO = Path(__file__).resolve().parents[1]
UNSHARE = ["unshare", "--pid", "--fork", "--mount-proc", "--mount", "--propagation", "private"]


def test_the_end_is_decided_in_one_order() -> None:
    # A completed summary wins over a cancel that raced it and over the scheduler's verdict.
    assert decide_end(Evidence("completed", 143, RunState.CANCELLED, "cancelled")).state == RunState.COMPLETED
    assert decide_end(Evidence("preempted", 75, cancel_requested="cancelled")).state == RunState.CANCELLED
    assert decide_end(Evidence("preempted", 75)).preempted
    assert decide_end(Evidence(None, None, RunState.COMPLETED)).state == RunState.COMPLETED
    assert decide_end(Evidence(None, 1)).state == RunState.FAILED
    assert decide_end(Evidence("completed", 0, alive=True)).state is None  # alive: no end yet
    # A hang the watchdog ended: requeued (the caller's budget decides), after completed and cancel.
    assert decide_end(Evidence("failed", 124, hung=True)) == End(None, hung=True)
    assert decide_end(Evidence("completed", 0, hung=True)).state == RunState.COMPLETED
    assert decide_end(Evidence("failed", 124, cancel_requested="cancelled", hung=True)).state == RunState.CANCELLED


def test_transitions_are_idempotent_and_completed_is_final() -> None:
    m = Manifest(run_id="r", experiment="e", cluster="c", backend="local", state="running")
    assert transition(m, RunState.COMPLETED, Actor.JOB)
    assert not transition(m, RunState.COMPLETED, Actor.JOB)  # again: no change
    for by in Actor:
        assert not transition(m, RunState.CANCELLED, by) and not transition(m, RunState.PENDING, by)
    assert m.state == RunState.COMPLETED
    m.state = RunState.RUNNING
    assert not transition(m, RunState.CANCELLED, Actor.CANCEL)  # cancel never ends a running run itself
    m.cancel_requested = "cancelled with `hpcllm cancel`"
    assert transition(m, RunState.CANCELLED, Actor.JOB, m.cancel_requested)
    assert m.reason == "cancelled with `hpcllm cancel`" and m.cancel_requested is None


def test_process_identity_names_one_process() -> None:
    me = procid.identify(os.getpid())
    assert me is not None and procid.alive(me) and procid.group_alive(me)
    assert not procid.alive(me.model_copy(update={"start_time": me.start_time + 1}))  # a reused pid
    assert not procid.alive(me.model_copy(update={"boot_id": "another boot"}))
    assert procid.identify(1) is None and procid.identify(-1) is None
    from hpcllm.launch.backends.local import pid_alive

    # <= 1 reaches every process or the caller's group; beyond the kernel's pid range os.kill raises
    # OverflowError (a damaged manifest's number): all are refused in one line, signal 0 only here.
    for pid in (-1, 0, 1, procid.PID_MAX_LIMIT + 1, 10**11, 2**63):
        other = me.model_copy(update={"pid": pid, "pgid": pid})
        assert "nothing signalled" in (procid.signal_group(other, 0) or "")
        assert "nothing signalled" in (procid.signal_process(other, 0) or "")
        assert not procid.alive(other) and not procid.group_alive(other) and not pid_alive(pid)
        assert procid.identify(pid) is None


def _holder(lock: Path) -> subprocess.Popen[str]:
    """Another process holding ``lock`` until its stdin closes."""
    code = (
        "import sys; from hpcllm.launch.locks import exclusive\n"
        f"with exclusive(__import__('pathlib').Path({str(lock)!r})):\n"
        "    print('held', flush=True); sys.stdin.read()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "held\n"
    return proc


def test_a_held_lock_names_its_holder_and_never_hangs(tmp_path: Path, monkeypatch, capsys) -> None:
    lock = tmp_path / ".manifest.lock"
    holder = _holder(lock)
    try:
        busy = pytest.raises(LockBusy, match=rf"locked by pid {holder.pid} on \S+ since \S+ \(-c")
        with busy, locks.exclusive(lock, timeout=0):  # a read-only command: no wait at all
            pass
        monkeypatch.setenv(locks.LOCK_TIMEOUT_ENV, "0.3")
        with pytest.raises(LockBusy, match=r"after 0.3 s"), locks.exclusive(lock):  # a writer: waits, gives up
            pass
        assert f"waiting for {lock}: held by pid {holder.pid}" in capsys.readouterr().err
    finally:
        holder.communicate("")
    with locks.exclusive(lock, timeout=0):  # released with its holder
        pass
    assert lock.read_text() == ""  # no stale owner once free


@pytest.mark.parametrize("value", ["nan", "abc", "-1", "inf", ""])
def test_a_bad_lock_timeout_is_refused_not_a_silent_wait(tmp_path: Path, monkeypatch, value: str) -> None:
    """``nan`` never reaches its deadline (a silent hang behind a held lock); a typo must not mean 300 s."""
    lock = tmp_path / ".manifest.lock"
    holder = _holder(lock)
    try:
        monkeypatch.setenv(locks.LOCK_TIMEOUT_ENV, value)
        with pytest.raises(HpcllmError, match=r"HPCLLM_LOCK_TIMEOUT=.*finite number >= 0"), locks.exclusive(lock):
            pass
    finally:
        holder.communicate("")


def test_no_flock_anywhere() -> None:
    offenders = [p for p in (REPO / "hpcllm").rglob("*.py") if "flock(" in p.read_text()]
    assert offenders == []


def test_a_torn_line_is_not_built_on(tmp_path: Path) -> None:
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 1}\n{"step": 2, "lo')  # a writer killed mid-line
    append_line(log, '{"step": 3}')
    assert log.read_text().splitlines()[-1] == '{"step": 3}'


def test_a_rerun_removes_what_an_interrupted_submit_left(tmp_path: Path) -> None:
    rd = RunDir(tmp_path / "r")
    rd.path.mkdir()
    left = [rd.path / ".job.sbatch.abc.tmp", rd.path / ".run.yaml.x1.tmp"]
    for p in left:
        p.write_text("half")
    (rd.path / ".summary.json.q.tmp").write_text("the engine's")
    assert sorted(remove_leftovers(rd)) == sorted(p.name for p in left)
    assert [p.name for p in rd.path.iterdir()] == [".summary.json.q.tmp"]


def _can_unshare() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run([*UNSHARE, "true"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.integration
@pytest.mark.skipif(not _can_unshare(), reason="needs root and PID/mount namespaces (unshare)")
def test_faults_in_a_pid_namespace(tmp_path: Path) -> None:
    """Runner killed while its job trains, and between starting its job and recording it, a cancel
    racing completion, forged pids, a results folder
    turning read-only mid-run, a full 2 MiB tmpfs (tests/faults_probe.py says what each checks)."""
    proc = subprocess.run(
        [*UNSHARE, sys.executable, str(REPO / "tests" / "faults_probe.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for scenario in (
        "runner-killed",
        "runner-killed-before-recording",
        "cancel-races-completion",
        "forged-pids",
        "read-only",
        "full-disk-cli",
        "full-disk",
    ):
        assert f"ok {scenario}" in proc.stdout.splitlines(), proc.stdout + proc.stderr


def test_the_latest_log_is_the_newest_job_not_the_newest_mtime(tmp_path: Path) -> None:
    rd = RunDir(tmp_path / "r")
    rd.path.mkdir()
    for job in ("98", "100", "99_3"):
        rd.log_file(job).write_text(job)
    os.utime(rd.log_file("98"), (4_000_000_000, 4_000_000_000))  # a file from the future
    assert rd.latest_log() == rd.log_file("100")
    assert rd.latest_log("99_3") == rd.log_file("99_3")  # the manifest's current job first


def test_a_clock_step_does_not_split_an_attempt(tmp_path: Path) -> None:
    from hpcllm.engine.metrics import earlier_attempts as earlier

    log = tmp_path / "metrics.jsonl"
    lines = [  # attempt 0: the wall clock steps back an hour between its two lines; then attempt 1
        {"step": 1, "restart": 0, "time": 10_000.0, "elapsed_s": 5.0},
        {"step": 2, "restart": 0, "time": 6_410.0, "elapsed_s": 10.0},
        {"step": 2, "restart": 1, "time": 6_500.0, "elapsed_s": 3.0},
    ]
    log.write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert earlier(log) == (2, 13.0)  # 10 s + 3 s, not 5 + 10 + 3
    # A resubmission (`--retry-failed`) starts at restart 0 again, maybe with a larger elapsed_s than
    # the last line of the job before it: the job id tells the two attempts apart.
    lines = [
        {"step": 1, "job_id": "71", "restart": 0, "time": 10_000.0, "elapsed_s": 4.0},
        {"step": 1, "job_id": "72", "restart": 0, "time": 9_000.0, "elapsed_s": 6.0},
    ]
    log.write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert earlier(log) == (1, 10.0)


def test_a_moved_run_folder_is_not_created_again(tmp_path: Path) -> None:
    from hpcllm.errors import HpcllmError
    from hpcllm.launch.manifest import load_manifest, save_manifest, update_manifest

    rd = RunDir(tmp_path / "results" / "e" / "c" / "r")
    rd.path.mkdir(parents=True)
    save_manifest(rd, Manifest(run_id="r", experiment="e", cluster="c", backend="local", state="running"))
    assert load_manifest(rd) is not None
    rd.path.rename(tmp_path / "moved")
    with pytest.raises(HpcllmError, match="the folder is gone"), update_manifest(rd):
        pass
    with pytest.raises(FileNotFoundError):
        save_manifest(rd, Manifest(run_id="r", experiment="e", cluster="c", backend="local"))
    assert not rd.path.exists()


@pytest.mark.integration
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root to act as another user")
def test_unreadable_results_are_reported_as_skipped() -> None:
    """Another user's experiment (umask 077) is named with the reason by `status` and `collect`."""
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="hpcllm-unreadable-"))
    try:
        base.chmod(0o755)
        for name, mode in (("open", 0o755), ("private", 0o700)):
            run = base / name / "local" / "r1"
            run.mkdir(parents=True)
            (run / "run.yaml").write_text("run_id: r1\n")
            (base / name).chmod(mode)
        hpcllm = str(Path(sys.executable).parent / "hpcllm")
        as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", hpcllm]
        env = {**os.environ, "COLUMNS": "300", "HOME": str(base)}
        for command in (["status", str(base)], ["collect", str(base), "--format", "csv"]):
            proc = subprocess.run([*as_nobody, *command], capture_output=True, text=True, env=env, cwd=base)
            skipped = [line for line in proc.stderr.splitlines() if line.startswith("skipped:")]
            assert any(f"{base / 'private'}: cannot list it (Permission denied)" in s for s in skipped), proc.stderr
            assert proc.returncode in (0, 2), proc.stderr
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_status_never_waits_for_a_writer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run's lock held by another process (a stopped `submit`, a hook): status shows the end it
    observes at once and leaves the manifest to the holder; once free, it records it."""
    from hpcllm.config.cluster import load_cluster
    from hpcllm.launch.backends.local import LocalBackend
    from hpcllm.launch.manifest import load_manifest, save_manifest

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    rd = RunDir(tmp_path / "results" / "e" / "local" / "r1")
    rd.path.mkdir(parents=True)
    m = Manifest(run_id="r1", experiment="e", cluster="local", backend="local", state="running", job_id="1")
    m.runner_pid = gone.pid
    save_manifest(rd, m)
    backend = LocalBackend(load_cluster(str(REPO / "clusters" / "local.yaml")))
    monkeypatch.setenv(locks.LOCK_TIMEOUT_ENV, "600")  # a wait would hang the test, not pass it
    holder = _holder(rd.lock_file)
    try:
        assert backend.refresh([(rd, load_manifest(rd))]) == {"r1": RunState.FAILED}
        assert load_manifest(rd).state == RunState.RUNNING  # the holder's to record
    finally:
        holder.communicate("")
    assert backend.refresh([(rd, load_manifest(rd))]) == {"r1": RunState.FAILED}
    assert load_manifest(rd).state == RunState.FAILED


def _ctrl_c_reaches_it() -> None:
    """A command started from a shell's background job inherits SIGINT ignored (bash does that when job
    control is off), and Python then never raises KeyboardInterrupt: give the child the default back."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.integration
def test_a_submit_waiting_for_another_says_for_whom_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    """Two commands at once on one results root: the second names the first and waits; Ctrl-C ends
    it at once without a traceback; once the first is done, a rerun completes."""
    results = tmp_path / "r"
    holder = _holder(results / "scaling_2.7b" / "leonardo" / ".submit.lock")
    args = [str(Path(sys.executable).parent / "hpcllm"), "submit", "experiments/scaling_2.7b.yaml"]
    args += ["--cluster", "leonardo", "--dry-run", "--results", str(results), "--no-memory-check"]
    env = {**os.environ, "COLUMNS": "300", "HPCLLM_CLUSTERS_DIR": str(REPO / "clusters")}
    try:
        second = subprocess.Popen(
            args,
            cwd=REPO,
            env=env,
            stderr=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=_ctrl_c_reaches_it,
        )
        assert second.stderr is not None
        first_line = ""
        while "waiting for" not in first_line:
            first_line = second.stderr.readline()
            assert first_line, "the waiting submit said nothing"
        assert f"held by pid {holder.pid} on " in first_line
        second.send_signal(signal.SIGINT)
        _, err = second.communicate(timeout=60)
        assert second.returncode == 130 and "Traceback" not in err, err
        assert err.strip().splitlines()[-1].startswith("interrupted"), err  # a word, not a silent 130
    finally:
        holder.communicate("")
    again = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert len(list(results.rglob("job.sbatch"))) == 18 and not list(results.rglob("*.tmp"))


def test_a_torn_metrics_line_is_skipped_and_reported(tmp_path: Path) -> None:
    from hpcllm.collect.records import RunRecord

    rd = RunDir(tmp_path / "r")
    rd.path.mkdir()
    rd.metrics.write_text('{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n{"step": 4, "lo')
    record = RunRecord(rd, {})
    assert [m["step"] for m in record.metrics] == [1, 3]
    assert record.problems == [f"{rd.metrics}: line 2 is torn (a writer died); skipped"]


@pytest.mark.integration
def test_ctrl_c_during_prepare_removes_its_hidden_temp_folder(tmp_path: Path) -> None:
    text = tmp_path / "in.txt"
    text.write_text("a line of text to tokenize, again and again\n" * 400_000)  # ~18 MB: seconds of work
    out = tmp_path / "store"
    hpcllm = str(Path(sys.executable).parent / "hpcllm")
    proc = subprocess.Popen(
        [hpcllm, "data", "prepare", "-i", str(text), "-o", str(out), "--workers", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_ctrl_c_reaches_it,
    )
    while not list(tmp_path.glob(".store.*.tmp")) and proc.poll() is None:
        time.sleep(0.01)  # polling for the folder to appear, not timing anything
    if proc.poll() is not None:
        pytest.fail("prepare ended before it could be interrupted")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "Traceback" not in err, err
    assert not list(tmp_path.glob(".store.*")) and not out.exists()


def test_a_cancel_that_reaches_nothing_records_nothing(tmp_path: Path) -> None:
    """A live runner recorded by pid alone (an older manifest) cannot be verified: not signalled,
    one line, and the run stays as it was (no `cancelled`, no pending request)."""
    from hpcllm.config.cluster import load_cluster
    from hpcllm.errors import BackendError
    from hpcllm.launch.backends.local import LocalBackend
    from hpcllm.launch.manifest import load_manifest, save_manifest

    rd = RunDir(tmp_path / "results" / "e" / "local" / "r1")
    rd.path.mkdir(parents=True)
    m = Manifest(run_id="r1", experiment="e", cluster="local", backend="local", state="running", job_id="1")
    bystander = subprocess.Popen(["sleep", "600"], start_new_session=True)
    try:
        m.runner_pid = bystander.pid  # alive, but nothing says it is still the run's runner
        save_manifest(rd, m)
        backend = LocalBackend(load_cluster(str(REPO / "clusters" / "local.yaml")))
        with pytest.raises(BackendError, match=r"^run r1: runner pid \d+ was recorded without its identity"):
            backend.cancel(rd, load_manifest(rd))
        assert bystander.poll() is None  # not signalled
    finally:
        bystander.kill()
        bystander.wait()
    after = load_manifest(rd)
    assert after.state == RunState.RUNNING and after.cancel_requested is None


def test_job_hooks_move_states_only_as_the_table_allows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A job starting (or failing to requeue) for a run another writer already ended does not bring
    it back: on_start does not launch it, on_requeue_failed does not turn it failed."""
    from engine_support import running_slurm_run

    from hpcllm.launch import jobhooks
    from hpcllm.launch.jobhooks import JobContext, on_requeue_failed, on_start
    from hpcllm.launch.manifest import load_manifest, save_manifest

    monkeypatch.setattr(jobhooks, "_slurm_state", lambda job_id: "RUNNING")  # no scheduler here
    for ended in (RunState.COMPLETED, RunState.FAILED, RunState.CANCELLED):
        rd = running_slurm_run(tmp_path / ended.value, max_restarts=1)
        m = load_manifest(rd)
        assert m is not None
        m.state, m.reason = ended, "decided before"
        save_manifest(rd, m)
        assert on_start(JobContext(rd, "43", "n1", 0)) is False
        on_requeue_failed(JobContext(rd, "43", "n1", 0), "Invalid job id")
        after = load_manifest(rd)
        assert after is not None and (after.state, after.job_id, after.reason) == (ended, "42", "decided before")
    rd = running_slurm_run(tmp_path / "pending", max_restarts=1)
    m = load_manifest(rd)
    assert m is not None
    m.state = RunState.PENDING
    save_manifest(rd, m)
    assert on_start(JobContext(rd, "43", "n1", 0)) is True
    assert (load_manifest(rd) or m).state == RunState.RUNNING
    on_requeue_failed(JobContext(rd, "43", "n1", 0), "Invalid job id")
    assert (load_manifest(rd) or m).state == RunState.FAILED


def test_a_writer_never_creates_a_gone_run_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from hpcllm.fsutil import append_line_in, write_json_in

    run = tmp_path / "results" / "e" / "c" / "r"
    run.mkdir(parents=True)
    assert write_json_in(run, run / "heartbeat" / "rank0.json", {"step": 1})  # a subfolder of a live run: made
    run.rename(tmp_path / "moved")
    assert not write_json_in(run, run / "heartbeat" / "rank0.json", {"step": 2})
    assert not write_json_in(run, run / "watchdog" / "rank0.json", {"step": 2})
    assert not append_line_in(run, run / "metrics.jsonl", '{"step": 2}')
    assert not run.exists() and not list(tmp_path.rglob("*.tmp"))
    said = [line for line in capsys.readouterr().err.splitlines() if "run folder is gone" in line]
    assert len(said) == 1 and str(run) in said[0], said  # once, not once per write


def test_no_engine_writer_makes_parent_folders() -> None:
    """The engine writes only into its run folder, through fsutil.write_in_folder: a `mkdir(parents=True)`
    there would create a moved run folder again (export writes where the user says: exempt)."""
    offenders = [
        p.name
        for p in (REPO / "hpcllm" / "engine").rglob("*.py")
        if p.name != "export.py" and "parents=True" in p.read_text()
    ]
    assert offenders == []


@pytest.mark.integration
def test_a_run_folder_moved_mid_run_is_not_created_again(tmp_path: Path, stores: dict[str, Path]) -> None:
    """The engine trains with its heartbeat written every step; its run folder is moved away after step
    2: training carries on to the end (exit 0), says so once, and the old path never reappears (no
    heartbeat, metrics line, final checkpoint or summary written there)."""
    from engine_support import engine_cmd, write_run

    run = tmp_path / "results" / "e" / "local" / "r"
    config = write_run(
        run,
        stores["plain"],
        train={"steps": 60, "micro_batch_size": 2, "summary_warmup_steps": 1},
        checkpoint={"at_end": True},
        watchdog={"heartbeat_every_s": 0.001},
    )
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    with open(out, "w") as stdout, open(err, "w") as stderr:
        engine = subprocess.Popen(
            engine_cmd(config), cwd=REPO, stdout=stdout, stderr=stderr, env={**os.environ, "OMP_NUM_THREADS": "1"}
        )
    try:
        metrics = run / "metrics.jsonl"
        while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
            assert engine.poll() is None, err.read_text()
            time.sleep(0.01)  # polling for a step to be logged, not timing anything
        engine.send_signal(signal.SIGSTOP)  # a still point: the move happens between two of its writes
        moved = tmp_path / "moved"
        run.rename(moved)
        engine.send_signal(signal.SIGCONT)
        assert engine.wait(timeout=120) == 0, err.read_text()
    finally:
        if engine.poll() is None:
            engine.kill()
            engine.wait()
    assert not run.exists(), sorted(str(p) for p in run.rglob("*"))
    text = err.read_text()
    assert text.count("the run folder is gone") == 1 and "Traceback" not in text, text
    lines = (moved / "metrics.jsonl").read_text().splitlines()
    assert 2 <= len(lines) < 60 and (moved / "heartbeat" / "rank0.json").exists()
    assert not (moved / "summary.json").exists()  # written after the move: nowhere

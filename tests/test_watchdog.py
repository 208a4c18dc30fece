"""The hang watchdog without a scheduler: heartbeats, detection, stacks, the verdict, and the end
hook's requeue without the named node. The whole path on SLURM: test_slurm_watchdog.py."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from engine_support import running_slurm_run

from hpcllm.config.training import TrainingConfig
from hpcllm.config.watchdog import WatchdogConfig
from hpcllm.engine.distributed import DistEnv
from hpcllm.engine.stragglers import StragglerTracker
from hpcllm.engine.watchdog import EXIT_HUNG, FAULT_STOP_ENV, Watchdog, fault_stop_step, name_culprits
from hpcllm.errors import ConfigError
from hpcllm.launch.jobhooks import JobContext, on_end
from hpcllm.launch.manifest import RunState, load_manifest, update_manifest
from hpcllm.rundir import RunDir, describe_stragglers


def env(rank: int = 0, world_size: int = 1) -> DistEnv:
    return DistEnv(
        rank=rank, world_size=world_size, local_rank=rank, local_world_size=world_size, device=torch.device("cpu")
    )


def report(completed: int, in_step: bool) -> dict[str, object]:
    return {"completed_step": completed, "in_step": in_step}


def test_the_rank_behind_the_others_is_named() -> None:
    # Rank 1 never entered step 5; ranks 0 and 2 wait inside it, in its first collective.
    assert name_culprits({0: report(4, True), 1: report(4, False), 2: report(4, True)}, 3) == [1]
    assert name_culprits({0: report(4, True), 1: report(4, True)}, 2) == []  # all inside one collective
    assert name_culprits({0: report(4, True)}, 3) == [1, 2]  # no report: dead, or holding the GIL


def test_fault_injection_is_off_by_default_and_first_attempt_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(FAULT_STOP_ENV, raising=False)
    assert fault_stop_step(1, restart=0) is None
    monkeypatch.setenv(FAULT_STOP_ENV, "1:5")
    assert fault_stop_step(1, restart=0) == 5
    assert fault_stop_step(0, restart=0) is None
    assert fault_stop_step(1, restart=1) is None
    monkeypatch.setenv(FAULT_STOP_ENV, "rank1")
    with pytest.raises(ConfigError, match=FAULT_STOP_ENV):
        fault_stop_step(1, restart=0)


def test_watchdog_defaults_stay_out_of_run_yaml(tmp_path: Path) -> None:
    """Run ids hash the dump: a default watchdog section must not change them; a set one does."""
    cfg = TrainingConfig.model_validate({"data": {"path": str(tmp_path)}})
    assert "watchdog" not in cfg.model_dump()
    short = cfg.model_copy(update={"watchdog": WatchdogConfig(timeout_s=20)})
    assert short.model_dump()["watchdog"]["timeout_s"] == 20
    assert TrainingConfig.model_validate(short.model_dump()).watchdog.timeout_s == 20


def test_a_stalled_rank_dumps_its_stacks_and_rank0_writes_the_verdict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLURMD_NODENAME", "n7")
    monkeypatch.setenv("SLURM_JOB_ID", "99")
    run_dir = RunDir(tmp_path)
    exited = threading.Event()
    codes: list[int] = []
    errors: list[str] = []

    def exit_process(code: int) -> None:
        codes.append(code)
        exited.set()

    dog = Watchdog(
        WatchdogConfig(timeout_s=0.5, heartbeat_every_s=3600), run_dir, env(), restart=0,
        on_hang=errors.append, exit_process=exit_process,
    )  # fmt: skip
    dog.start(0)
    try:
        for step in (1, 2, 3):
            dog.step_started(step)
            dog.step_ended(step, 0.01)
        beat = json.loads(run_dir.heartbeat(0).read_text())
        assert (beat["step"], beat["node"], beat["rank"]) == (0, "n7", 0)  # the one at start: throttled since
        dog.step_started(4)  # and it never ends
        assert exited.wait(30), "the watchdog did not fire"
    finally:
        dog.close()
    assert codes == [EXIT_HUNG]
    stacks = (run_dir.watchdog_dir / "stacks-rank0.txt").read_text()
    assert "rank 0 on n7" in stacks and "test_watchdog.py" in stacks  # this thread's frames are in it
    verdict = json.loads(run_dir.watchdog_verdict.read_text())
    assert verdict["step"] == 4 and verdict["ranks"] == [] and verdict["job_id"] == "99"  # one rank: no culprit
    assert verdict["detected_time"] - verdict["last_progress_time"] >= 0.5
    assert errors == [verdict["reason"]] and "no progress for 0.5 s at step 4" in errors[0]


def test_a_disarmed_watchdog_never_fires(tmp_path: Path) -> None:
    fired: list[int] = []
    dog = Watchdog(
        WatchdogConfig(timeout_s=0.3), RunDir(tmp_path), env(), restart=0, on_hang=print, exit_process=fired.append
    )
    dog.start(0)
    dog.close()  # the loop ended: a final save or a long teardown is not a hang
    assert dog._thread is not None and not dog._thread.is_alive()
    assert fired == [] and not RunDir(tmp_path).watchdog_dir.exists()


def test_end_hook_requeues_a_hang_without_its_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    run_dir = running_slurm_run(tmp_path / "run", nodes="n[1-2]", max_restarts=1)
    run_dir.summary.write_text(json.dumps({"status": "failed", "error": "watchdog: ..."}))
    verdict = {"reason": "watchdog: no progress for 20 s at step 6: rank 1 on n2 behind the others",
               "nodes": ["n2"], "ranks": [1], "restart": 0, "job_id": "42"}  # fmt: skip
    run_dir.watchdog_verdict.write_text(json.dumps(verdict))
    ctx = JobContext(run_dir=run_dir, job_id="42", nodelist="n[1-2]", restart_count=0)
    assert on_end(ctx, 1, "") == "requeue"
    m = load_manifest(run_dir)
    assert m is not None and m.state == RunState.PENDING and m.exclude_nodes == ["n2"]
    assert m.restarts[-1].failed_nodes == ["n2"] and "rank 1 on n2" in m.restarts[-1].reason
    # The next attempt hangs too, past the budget: failed, with the engine's reason.
    ctx = JobContext(run_dir=run_dir, job_id="42", nodelist="n[1,3]", restart_count=1)
    run_dir.watchdog_verdict.write_text(json.dumps({**verdict, "restart": 1}))
    assert on_end(ctx, 1, "") == "exit 1"
    m = load_manifest(run_dir)
    assert m is not None and m.state == RunState.FAILED and len(m.restarts) == 1


def test_a_hang_is_ended_by_the_run_state_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hook weighs a hang after a completed summary and a cancel (runstate.decide_end): a run
    that `hpcllm cancel` asked to stop is cancelled, not requeued, though its watchdog fired."""
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    run_dir = running_slurm_run(tmp_path / "run", nodes="n[1-2]", max_restarts=2)
    run_dir.summary.write_text(json.dumps({"status": "failed", "error": "watchdog: ..."}))
    verdict = {"reason": "watchdog: no progress", "nodes": ["n2"], "ranks": [1], "restart": 0, "job_id": "42"}
    run_dir.watchdog_verdict.write_text(json.dumps(verdict))
    with update_manifest(run_dir) as m:
        m.cancel_requested = "cancelled with `hpcllm cancel`"
    assert on_end(JobContext(run_dir=run_dir, job_id="42", nodelist="n[1-2]", restart_count=0), EXIT_HUNG, "") == (
        "cancel"
    )
    m = load_manifest(run_dir)
    assert m is not None and m.state == RunState.CANCELLED and m.reason == "cancelled with `hpcllm cancel`"
    assert m.restarts == [] and m.exclude_nodes == [] and m.cancel_requested is None


def beats(t: float, probes: list[float]) -> dict[int, dict[str, Any]]:
    return {
        r: {"rank": r, "node": f"n{r + 1}", "probe_tflops": p, "time": t, "restart": 0} for r, p in enumerate(probes)
    }


def test_a_rank_consistently_below_the_median_is_flagged_and_its_recovery_kept() -> None:
    tracker = StragglerTracker(margin=0.2, checks=3)
    assert not tracker.update(beats(1, [10, 11, 6]))
    assert not tracker.update(beats(1, [10, 11, 6]))  # the same heartbeats again: not a new reading
    assert not tracker.update(beats(2, [10, 11, 9]))  # 0.9x: within the margin, the streak restarts
    assert not tracker.update(beats(3, [10, 11, 6])) and not tracker.update(beats(4, [10, 11, 6]))
    assert tracker.update(beats(5, [10, 11, 5]))  # third slow reading in a row
    (flag,) = tracker.record()["ranks"]
    assert (flag["rank"], flag["node"], flag["ratio"]) == (2, "n3", 0.5)
    assert tracker.update(beats(6, [10, 11, 10])) and tracker.record()["ranks"][0]["recovered"]
    assert describe_stragglers(tracker.record()["ranks"]) == "rank 2 on n3 (0.50x, recovered)"


def test_rank0_reads_the_heartbeats_and_records_the_straggler(tmp_path: Path) -> None:
    run_dir = RunDir(tmp_path)
    cfg = WatchdogConfig(straggler_checks=2)
    dog = Watchdog(cfg, run_dir, env(0, 3), restart=0, on_hang=print, exit_process=lambda code: None)
    dog._write_heartbeat()
    assert json.loads(run_dir.heartbeat(0).read_text())["probe_tflops"] > 0  # timed on this CPU
    for t in (1.0, 2.0):
        for r, hb in beats(t, [8.0, 8.0, 2.0]).items():
            run_dir.heartbeat(r).write_text(json.dumps(hb))
        dog.check_stragglers()
    record = json.loads(run_dir.stragglers.read_text())
    assert [s["rank"] for s in record["ranks"]] == [2] and dog.summary_fields()["stragglers"][0]["node"] == "n3"

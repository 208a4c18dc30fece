"""Clocks (issue 21): a wall clock that steps back, and another time zone, between two submissions of
one run on the local backend, under libfaketime (``faketime``, LD_PRELOAD). The clock is stepped for
the hpcllm command itself, which takes the local job id and every manifest time from it; the runner
and the engine it starts run on the machine's clock, so each attempt measures its duration truly
(libfaketime cannot be given to them: faking the monotonic clock too makes Python's timed waits
hang, and ``FAKETIME_DONT_FAKE_MONOTONIC`` makes ``time.sleep`` fail with EINVAL, in 0.9.10).
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from hpcllm.launch.manifest import load_manifest
from hpcllm.rundir import find_run_dirs

REPO = Path(__file__).resolve().parents[1]
LIBFAKETIME = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1") + glob.glob("/usr/lib/faketime/libfaketime.so*"))


# `hpcllm` whose own clock is faked, its children's not (libfaketime is preloaded already).
CLI_ON_ITS_OWN_CLOCK = (
    "import os, sys\n"
    "os.environ.pop('LD_PRELOAD'); os.environ.pop('FAKETIME')\n"
    "from hpcllm.cli import main\n"
    "sys.argv[0] = 'hpcllm'\n"
    "sys.exit(main())\n"
)


def _hpcllm(
    args: list[str], offset_s: int, tz: str = "UTC", extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """An hpcllm command whose clock is ``offset_s`` seconds off, in time zone ``tz``."""
    env = {
        **os.environ,
        "LD_PRELOAD": LIBFAKETIME[0],
        "FAKETIME": f"{offset_s:+d}",
        "TZ": tz,
        "COLUMNS": "300",
        "HPCLLM_CLUSTERS_DIR": str(REPO / "clusters"),
        "OMP_NUM_THREADS": "1",
        **(extra or {}),
    }
    if not extra:
        env.pop("HPCLLM_FAULT_STOP_RANK_AT", None)
    return subprocess.run(
        [sys.executable, "-c", CLI_ON_ITS_OWN_CLOCK, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.integration
@pytest.mark.skipif(not LIBFAKETIME, reason="needs libfaketime (apt-get install faketime)")
def test_a_stepped_clock_changes_no_duration_and_no_current_log(tmp_path: Path, stores: dict[str, Path]) -> None:
    """Attempt A is submitted on a clock 1 h ahead and hangs at step 3 (fault injection; the watchdog
    ends it, failed); attempt B (`--retry-failed`) is submitted on a clock stepped back by up to 115 days,
    in another time zone, so its job id (taken from the wall clock) is below A's. The summary's wall time
    is the attempts' monotonic durations added; `logs` shows B's log, not the log of the highest job id;
    `status` on yet another clock and zone agrees."""
    doc = {
        "name": "clk",
        "resources": {"nodes": 1, "time": "00:10:00"},
        "training": {
            "model": {"preset": "tiny", "n_layers": 1},
            "train": {"steps": 30, "micro_batch_size": 2, "summary_warmup_steps": 1},
            "schedule": {"name": "constant"},
            "parallel": {"precision": "FP_32"},
            "data": {"path": str(stores["plain"]), "num_workers": 0},
            "watchdog": {"timeout_s": 8},
            "tracking": {"tensorboard": False},
        },
        "grid": {"resources.gpus_per_node": [1]},
    }
    exp = tmp_path / "clk.yaml"
    exp.write_text(yaml.safe_dump(doc))
    results = tmp_path / "results"
    submit = ["submit", str(exp), "--cluster", "local", "--results", str(results)]
    out = _hpcllm([*submit, "--wait"], offset_s=3600, extra={"HPCLLM_FAULT_STOP_RANK_AT": "0:3"})
    (rd,) = find_run_dirs(results)
    first = load_manifest(rd)
    assert first is not None and first.state.value == "failed", out.stdout + out.stderr
    a_lines = [json.loads(line) for line in rd.metrics.read_text().splitlines()]
    assert [rec["step"] for rec in a_lines] == [1, 2]
    # Back to a moment whose local job id (wall-clock ms modulo 10^10) is below attempt A's.
    back = -int((time.time() * 1000) % 10**10 // 1000) + 60
    out = _hpcllm([*submit, "--retry-failed", "--wait"], offset_s=back, tz="Pacific/Kiritimati")
    second = load_manifest(rd)
    assert second is not None and second.state.value == "completed", out.stdout + out.stderr
    assert int(second.job_id or 0) < int(first.job_id or 0), (first.job_id, second.job_id)

    b_lines = [json.loads(line) for line in rd.metrics.read_text().splitlines()][len(a_lines) :]
    summary = json.loads(rd.summary.read_text())
    assert summary["steps_completed"] == 30 and b_lines[-1]["step"] == 30
    assert b_lines[-1]["elapsed_s"] <= summary["elapsed_s"]
    # A lasted (as its lines measured it, monotonic) up to its last line; B up to its summary.
    assert abs(summary["wall_time_s"] - (a_lines[-1]["elapsed_s"] + summary["elapsed_s"])) < 0.01, summary
    assert 0 < summary["wall_time_s"] < 3600  # neither clock step leaked into a duration

    logs = _hpcllm(["logs", rd.run_id, "--results", str(results), "-n", "400"], offset_s=30 * 86400)
    assert logs.returncode == 0, logs.stderr
    assert f"[hpcllm] job {second.job_id} restart 0" in logs.stdout
    assert f"[hpcllm] job {first.job_id} " not in logs.stdout
    status = _hpcllm(["status", str(results)], offset_s=-7 * 86400, tz="America/St_Johns")
    assert status.returncode == 0 and "completed" in status.stdout, status.stdout + status.stderr

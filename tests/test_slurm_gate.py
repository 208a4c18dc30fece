"""The gate of the SLURM tests (tests/slurm_gate.py), exercised without touching the shared cluster:
a pytest run in a subprocess, on a one-test file, pointed at a scheduler that does not answer."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

NEEDS_CLUSTER = """
import pytest

@pytest.mark.slurm
def test_needs_the_cluster():
    pass

def test_plain():
    pass
"""


def closed_port() -> int:
    """A TCP port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_pytest(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_one.py").write_text(NEEDS_CLUSTER)
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "slurm_gate",
        "-p",
        "no:cacheprovider",
        "-q",
        "--rootdir",
        str(tmp_path),
        "-c",
        os.devnull,
        str(tmp_path / "test_one.py"),
    ]
    full_env = {k: v for k, v in os.environ.items() if k not in ("SLURM_CONF", "HPCLLM_REQUIRE_SLURM")}
    full_env.update(PYTHONPATH=str(TESTS), **env)
    return subprocess.run(cmd, capture_output=True, text=True, env=full_env, cwd=tmp_path, timeout=300)


@pytest.mark.integration  # sinfo retries an unreachable controller for ~10 s
def test_under_make_test_an_unreachable_scheduler_fails_the_run_with_the_reason(tmp_path: Path) -> None:
    conf = tmp_path / "slurm.conf"
    conf.write_text(
        f"ClusterName=nowhere\nSlurmctldHost=localhost(127.0.0.1)\nSlurmctldPort={closed_port()}\n"
        "AuthType=auth/munge\nNodeName=n1 CPUs=1 State=UNKNOWN\n"
        "PartitionName=debug Nodes=n1 Default=YES MaxTime=INFINITE State=UP\n"
    )
    res = run_pytest(tmp_path, {"SLURM_CONF": str(conf), "HPCLLM_REQUIRE_SLURM": "1"})
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    reasons = [line for line in out.splitlines() if "the local SLURM cluster is required" in line]
    assert reasons, out
    assert "(HPCLLM_REQUIRE_SLURM=1) but unusable: `sinfo` failed:" in reasons[0]
    assert "Unable to contact slurm controller" in reasons[0]
    assert out.strip().splitlines()[-1].startswith("1 passed, 1 error")  # an error at set-up: exit 1


def test_by_hand_without_the_cluster_skips_and_the_final_line_counts_them(tmp_path: Path) -> None:
    # No SLURM client tools at all: PATH holds only this interpreter's folder.
    res = run_pytest(tmp_path, {"PATH": str(Path(sys.executable).parent)})
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    lines = out.strip().splitlines()
    assert lines[-1].startswith("1 passed, 1 scheduler tests not run (no SLURM cluster)"), out
    assert (
        "1 scheduler (slurm) tests did not run: the SLURM client tools are not installed (sinfo is not "
        "on PATH); start it with `sudo scripts/local-slurm.sh up`"
    ) in out


@pytest.mark.skipif(os.geteuid() != 0, reason="test.sh starts the cluster only as root (as CI runs it)")
def test_test_sh_requires_the_scheduler_and_ends_with_one_line_when_it_did_not_start(tmp_path: Path) -> None:
    """scripts/test.sh in a copy of the tree whose local-slurm.sh cannot start and whose pytest
    reports what it was given: the real cluster is never touched."""
    (tmp_path / "scripts").mkdir()
    script = tmp_path / "scripts" / "test.sh"
    script.write_text((TESTS.parent / "scripts" / "test.sh").read_text())
    fake_slurm = tmp_path / "scripts" / "local-slurm.sh"
    fake_slurm.write_text('#!/bin/bash\necho "[local-slurm] error: slurmctld did not start" >&2\nexit 1\n')
    python = tmp_path / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    # Stands in for pytest: reports the gate's setting, then fails as the scheduler tests would.
    python.write_text(
        "#!/bin/bash\n"
        'echo "pytest $* require=${HPCLLM_REQUIRE_SLURM:-unset} regen=${HPCLLM_REGEN_GOLDEN:-unset}"\n'
        "exit 1\n"
    )
    for exe in (script, fake_slurm, python):
        exe.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("HPCLLM_SKIP_SLURM", "HPCLLM_REQUIRE_SLURM")}
    res = subprocess.run(
        [str(script), "-x"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "VENV": str(tmp_path / "venv"), "HPCLLM_REGEN_GOLDEN": "1"},
    )
    assert res.returncode == 1
    # The gate on, golden files checked; test.sh adds its own --junitxml (to count what ran) before the arguments.
    assert re.search(r"^pytest -m pytest --junitxml=\S+ -x require=1 regen=unset$", res.stdout, re.M), res.stdout
    assert res.stderr.strip().splitlines()[-1] == (
        "test.sh: FAILED: the local SLURM cluster did not come up (scripts/local-slurm.sh up failed "
        "(its output is above)), so the scheduler tests could not run"
    )

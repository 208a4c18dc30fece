"""Tests marked ``slurm`` need the local SLURM cluster (scripts/local-slurm.sh). This gate decides,
once per session, whether it answers, and what a test that needs it does when it does not:

- under ``make test`` / ``.ci/run`` (scripts/test.sh exports ``HPCLLM_REQUIRE_SLURM=1``) it fails,
  with the reason: a CI run must never go green with its scheduler tests skipped;
- when a person runs ``pytest`` by hand without the cluster it skips, and pytest's final line
  counts those tests apart ("N scheduler tests not run (no SLURM cluster)"), with the reason
  and how to start the cluster just above it.

Loaded by tests/conftest.py (its hooks are imported there).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REQUIRE_ENV = "HPCLLM_REQUIRE_SLURM"
LOCAL_SLURM_CONF = Path(os.environ.get("HPCLLM_SLURM_DIR", "/tmp/hpcllm-slurm")) / "etc" / "slurm.conf"
PARTITION = "debug"
PARTITION_NODES = 4
NOT_RUN = "scheduler tests not run (no SLURM cluster)"  # the category in pytest's final line
_SKIP_PREFIX = "no SLURM cluster: "
_START = "start it with `sudo scripts/local-slurm.sh up`"


def slurm_env() -> dict[str, str]:
    """This environment, pointed at the local cluster's config unless SLURM_CONF names another."""
    env = dict(os.environ)
    if "SLURM_CONF" not in env and LOCAL_SLURM_CONF.exists():
        env["SLURM_CONF"] = str(LOCAL_SLURM_CONF)
    return env


@functools.lru_cache(maxsize=1)
def cluster_problem() -> str | None:
    """Why the local cluster cannot be used, or None when it is up with all its nodes (asked once)."""
    if shutil.which("sinfo") is None:
        return "the SLURM client tools are not installed (sinfo is not on PATH)"
    cmd = ["sinfo", "--noheader", f"--partition={PARTITION}", "--Node", "--format=%N %T"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=slurm_env(), timeout=60)
    except subprocess.TimeoutExpired:
        return "`sinfo` did not answer within 60 s"
    if proc.returncode != 0:
        said = " ".join(proc.stderr.split()) or f"exit {proc.returncode}"
        return f"`sinfo` failed: {said}"
    nodes = {line.split()[0] for line in proc.stdout.splitlines() if line.strip()}
    if len(nodes) < PARTITION_NODES:
        return f"partition {PARTITION} has {len(nodes)} nodes, the tests need {PARTITION_NODES}"
    return None


def require_cluster() -> None:
    """Return when the cluster answers; else fail (HPCLLM_REQUIRE_SLURM=1) or skip, with the reason."""
    problem = cluster_problem()
    if problem is None:
        return
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"the local SLURM cluster is required ({REQUIRE_ENV}=1) but unusable: {problem}", pytrace=False)
    pytest.skip(f"{_SKIP_PREFIX}{problem}; {_START}")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slurm: needs the local SLURM cluster from scripts/local-slurm.sh")


@pytest.hookimpl(tryfirst=True)  # before any fixture of the test is set up
def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("slurm") is not None:
        require_cluster()


def _gate_skip(report: pytest.TestReport) -> str | None:
    """The reason, for a test this gate skipped."""
    if report.skipped and isinstance(report.longrepr, tuple):
        reason = str(report.longrepr[2]).removeprefix("Skipped: ")
        if reason.startswith(_SKIP_PREFIX):
            return reason
    return None


def pytest_report_teststatus(report: pytest.TestReport) -> tuple[str, str, str] | None:
    """Count the gate's skips in a category of their own, so the final line names them."""
    if _gate_skip(report) is not None:
        return NOT_RUN, "s", "SKIPPED (no SLURM cluster)"
    return None


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    reports = terminalreporter.stats.get(NOT_RUN, [])
    if reports:
        reason = _gate_skip(reports[0]) or ""
        terminalreporter.write_line(
            f"{len(reports)} scheduler (slurm) tests did not run: {reason.removeprefix(_SKIP_PREFIX)} "
            f"(under `make test` they fail instead)",
            yellow=True,
            bold=True,
        )

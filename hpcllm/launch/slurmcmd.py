"""Calls to SLURM's command-line tools, torch-free, shared by the backend and the batch-script hooks.

Every call is an argument list (no shell), and every failure raises ``BackendError`` with the
command line and the scheduler's own stderr, because "sbatch failed" alone never tells a user that
the partition name was wrong.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess

from hpcllm.errors import BackendError

# Node states (scontrol's State=, lower-cased, flags after '+' dropped) that mean "failed".
FAILED_NODE_STATES = frozenset({"down", "drain", "drained", "draining", "fail", "failing", "not_responding"})

# How long one scheduler command may take before we give up: slurmctld answers in milliseconds
# unless it is overloaded or gone, and a hung CLI must not hang `hpcllm status`.
COMMAND_TIMEOUT_S = 60


def run_slurm(cmd: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a SLURM command; with ``check``, a non-zero exit raises with the command and its stderr."""
    if shutil.which(cmd[0]) is None:
        raise BackendError(
            f"`{cmd[0]}` is not on PATH: run this on a SLURM login node (or start the local SLURM "
            "cluster with `scripts/local-slurm.sh up`), or render only with --dry-run"
        )
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise BackendError(f"`{shlex.join(cmd)}` did not answer in {COMMAND_TIMEOUT_S} s: is slurmctld up?") from None
    if check and proc.returncode != 0:
        raise BackendError(
            f"`{shlex.join(cmd)}` failed (exit {proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}"
        )
    return proc


def hostnames(nodelist: str) -> list[str]:
    """``n[1-3],x5`` -> ``['n1', 'n2', 'n3', 'x5']`` (scontrol knows every hostlist form)."""
    if not nodelist or nodelist in ("(null)", "None"):
        return []
    return run_slurm(["scontrol", "show", "hostnames", nodelist]).stdout.split()


def parse_scontrol_record(line: str) -> dict[str, str]:
    """One ``scontrol -o show ...`` line -> ``{Key: value}`` (values never contain spaces there,
    except the trailing free-text fields we do not read)."""
    fields: dict[str, str] = {}
    for token in line.split():
        key, sep, value = token.partition("=")
        if sep:
            fields[key] = value
    return fields


def failed_nodes(nodes: list[str]) -> list[str]:
    """The nodes among ``nodes`` that SLURM currently reports down, drained, failing or not responding."""
    if not nodes:
        return []
    proc = run_slurm(["scontrol", "-o", "show", "node", ",".join(nodes)], check=False)
    bad = []
    for line in proc.stdout.splitlines():
        rec = parse_scontrol_record(line)
        state = rec.get("State", "")
        states = {s.lower().rstrip("*~#!%$@^-") for s in state.split("+")}
        # A trailing '*' means "not responding" (e.g. its slurmd was killed).
        if rec.get("NodeName") and (states & FAILED_NODE_STATES or state.endswith("*")):
            bad.append(rec["NodeName"])
    return bad

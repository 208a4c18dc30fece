"""What an account may still spend, as the scheduler's accounting says: ``sacctmgr`` for the limit,
``sshare`` for the usage, and the site's own budget command (a profile setting) beside them.

SLURM caps an account's total spend with ``GrpTRESMins`` on its association (``sacctmgr show assoc``:
``cpu=600,gres/gpu=…``, TRES-minutes); the usage counted against it is ``sshare``'s ``GrpTRESRaw``
(TRES-minutes as well: the figure in brackets of ``scontrol show assoc_mgr``'s ``GrpTRESMins=cpu=600(12)``).
Sites that bill outside SLURM (CINECA's ``saldo``, BSC's ``bsc_acct``) print their own tables, which
hpcllm shows as they are rather than parse a format it cannot test.

Torch-free and small: one function per scheduler call, parsing apart from calling.
"""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
from dataclasses import dataclass

from hpcllm.config.accounting import BudgetCommand
from hpcllm.errors import BackendError
from hpcllm.launch.slurmcmd import COMMAND_TIMEOUT_S, run_slurm


@dataclass(frozen=True)
class Allowance:
    """One capped TRES of an account: its GrpTRESMins limit and the minutes used against it."""

    account: str
    tres: str
    limit_min: float
    used_min: float

    @property
    def left_min(self) -> float:
        return self.limit_min - self.used_min


@dataclass(frozen=True)
class AccountBudget:
    """What the scheduler says of an account (``allowances`` empty: no GrpTRESMins cap)."""

    account: str
    allowances: list[Allowance]
    source: str  # the commands asked


def _minutes(tres: str) -> dict[str, float]:
    """``cpu=600,gres/gpu=40`` -> {tres: value}; unset entries (``N``, empty) are left out."""
    out = {}
    for item in tres.split(","):
        name, _, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            continue
    return out


def parse_grp_tres_mins(output: str, account: str) -> dict[str, float]:
    """``sacctmgr -nP show assoc where account=A format=Account,User,GrpTRESMins``: the account's own
    line (no user) -> {tres: minutes}; limits set on a user's association are a user's, not the budget."""
    for line in output.splitlines():
        fields = line.split("|")
        if len(fields) >= 3 and fields[0].lower() == account.lower() and not fields[1]:
            return _minutes(fields[2])
    return {}


def parse_grp_tres_raw(output: str, account: str) -> dict[str, float]:
    """``sshare -nP -A A -o Account,User,GrpTRESRaw``: the account's line -> {tres: minutes used}."""
    for line in output.splitlines():
        fields = [f.strip() for f in line.split("|")]
        if len(fields) >= 3 and fields[0].lower() == account.lower() and not fields[1]:
            return _minutes(fields[2])
    return {}


def current_user() -> str:
    return os.environ.get("USER") or getpass.getuser()


def account_budget(account: str | None) -> AccountBudget | None:
    """The GrpTRESMins allowances of ``account`` (the user's default account, what sbatch charges
    without -A, when None); None when this cluster keeps no accounting (no slurmdbd) or the account
    is unknown to it."""
    probe = run_slurm(["sacctmgr", "-nP", "show", "user", current_user(), "format=DefaultAccount"], check=False)
    if probe.returncode != 0:  # no slurmdbd: "accounting storage is disabled", or it does not answer
        return None
    default = probe.stdout.split()
    account = account or (default[0] if default else None)
    if not account:
        return None
    limit_cmd = ["sacctmgr", "-nP", "show", "assoc", "where", f"account={account}", "format=Account,User,GrpTRESMins"]
    limit_out = run_slurm(limit_cmd).stdout
    if not limit_out.strip():
        return None
    limits = parse_grp_tres_mins(limit_out, account)
    usage_cmd = ["sshare", "-nP", "-A", account, "-o", "Account,User,GrpTRESRaw"]
    used = parse_grp_tres_raw(run_slurm(usage_cmd).stdout, account) if limits else {}
    allowances = [Allowance(account, tres, limit, used.get(tres, 0.0)) for tres, limit in sorted(limits.items())]
    return AccountBudget(account, allowances, "sacctmgr show assoc (GrpTRESMins), sshare (GrpTRESRaw)")


def site_budget_text(command: BudgetCommand) -> str:
    """The site's budget command's output, as it printed it (BackendError when it cannot run)."""
    if shutil.which(command.argv[0]) is None:
        raise BackendError(f"`{command.argv[0]}` is not on PATH (profile accounting.budget_command: {command.source})")
    try:
        proc = subprocess.run(command.argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise BackendError(f"`{' '.join(command.argv)}` did not answer in {COMMAND_TIMEOUT_S} s") from None
    if proc.returncode != 0:
        raise BackendError(f"`{' '.join(command.argv)}` failed (exit {proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout

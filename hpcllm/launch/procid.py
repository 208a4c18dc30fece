"""Who a process is, beyond its pid: the one boundary for "is this process still the run's?".

A pid alone names a process only until it exits: the kernel hands the number to the next process
that starts, and after a reboot every number is reused. So the local backend records, for the
runner and for the job it starts, the pid, its process-group id, its start time (field 22 of
``/proc/<pid>/stat``, in clock ticks since boot) and the boot id (``/proc/sys/kernel/random/boot_id``).
The same three facts read again name the same process; anything else is someone else's process.

Liveness and signalling are one question: ``alive`` answers it, and ``signal_group`` signals only
a group whose leader is verified to be the one recorded. pid ≤ 1 is never signalled (``kill(-1)``
reaches every process the user may signal, ``kill(0)`` the caller's own group).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
PID_MAX_LIMIT = 2**22  # the kernel's ceiling for pid_max (PID_MAX_LIMIT on 64-bit Linux)


def is_pid(number: int) -> bool:
    """Whether a recorded number can name another process at all: not ≤ 1 (``kill(-1)`` reaches every
    process, ``kill(0)`` the caller's group, 1 is init) and not beyond what the kernel hands out
    (a damaged manifest's 10^11 would be an OverflowError in ``os.kill``, not a refusal)."""
    return 1 < number <= PID_MAX_LIMIT


class ProcessId(BaseModel):
    """A process as recorded at launch (manifest.json ``runner`` / ``job``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pid: int
    pgid: int
    start_time: int  # clock ticks after boot, /proc/<pid>/stat field 22
    boot_id: str
    host: str = ""


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state letter, pgid, start time) of ``pid``, None when there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ")".
    fields = text[text.rfind(")") + 2 :].split()
    return fields[0], int(fields[2]), int(fields[19])


def boot_id() -> str:
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return ""


def identify(pid: int, host: str = "") -> ProcessId | None:
    """The identity of the live process ``pid`` (None if it is gone or ``pid`` ≤ 1)."""
    if not is_pid(pid):
        return None
    stat = _stat(pid)
    if stat is None:
        return None
    return ProcessId(pid=pid, pgid=stat[1], start_time=stat[2], boot_id=boot_id(), host=host)


def alive(proc: ProcessId | None) -> bool:
    """True when the recorded process still runs (not a zombie): same boot, same pid, same start."""
    if proc is None or not is_pid(proc.pid) or proc.boot_id != boot_id():
        return False
    stat = _stat(proc.pid)
    return stat is not None and stat[2] == proc.start_time and stat[0] not in ("Z", "X")


def group_alive(proc: ProcessId | None) -> bool:
    """True while any process of the recorded group runs. The leader may be gone while the group's
    other members (an engine under the job's shell) still run; the group id is only trusted while
    this boot lasts and while no process other than the recorded leader leads a group of that id."""
    if proc is None or not is_pid(proc.pgid) or proc.boot_id != boot_id():
        return False
    if alive(proc):
        return True
    leader = _stat(proc.pgid)
    if leader is not None and leader[1] == proc.pgid:
        return False  # a new process leads a group of that number: not ours
    try:
        os.killpg(proc.pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # not ours to signal, so not ours
    return _members_alive(proc.pgid)


def _members_alive(pgid: int) -> bool:
    """Some non-zombie process is in group ``pgid`` (killpg(0) also counts zombies)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None and stat[1] == pgid and stat[0] not in ("Z", "X"):
                return True
    return False


def signal_group(proc: ProcessId | None, sig: int) -> str | None:
    """Send ``sig`` to the recorded process group; None when sent, else one line saying why not."""
    if proc is None:
        return "no process recorded: nothing signalled"
    if not (is_pid(proc.pid) and is_pid(proc.pgid)):
        return f"recorded pid {proc.pid} / group {proc.pgid} is not a run's process: nothing signalled"
    if not group_alive(proc):
        return f"process group {proc.pgid} is no longer the run's (exited, or its id was reused): nothing signalled"
    return _send(os.killpg, proc.pgid, sig, "process group")


def signal_process(proc: ProcessId | None, sig: int) -> str | None:
    """Send ``sig`` to the recorded process itself, after verifying it; None when sent."""
    if proc is None or not is_pid(proc.pid):
        return "no valid process recorded: nothing signalled"
    if not alive(proc):
        return f"process {proc.pid} is no longer the run's (exited, or its pid was reused): nothing signalled"
    return _send(os.kill, proc.pid, sig, "process")


def _send(kill: Callable[[int, int], None], target: int, sig: int, what: str) -> str | None:
    """The one place a verified target is signalled; None when sent, else why not (it raced away)."""
    try:
        kill(target, sig)
    except ProcessLookupError:
        return f"{what} {target} exited: nothing signalled"
    except PermissionError:
        return f"{what} {target}: not permitted to signal it"
    return None

"""Which run a RUN_ID on the command line means: the one resolver of ``cancel``, ``logs`` and every
other command that takes one.

An id names a run when it equals the run's folder name, or is a prefix of exactly one. An empty or
blank id names nothing (as a prefix it would match every run, and ``cancel ""`` would cancel one
at random); an id matching several runs names none, and the error lists the candidates.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from hpcllm.errors import HpcllmError
from hpcllm.rundir import RunDir, find_run_dirs

SHOWN = 10  # candidates listed in an error


def resolve_run_id(root: Path, run_id: str, run_dirs: Iterable[RunDir] | None = None) -> RunDir:
    """The one run below ``root`` that ``run_id`` names; HpcllmError (one line, with candidates) otherwise."""
    runs = list(find_run_dirs(root) if run_dirs is None else run_dirs)
    if not run_id.strip() or run_id != run_id.strip() or "/" in run_id:
        raise HpcllmError(f"run id {run_id!r} names no run: give a run's id or a unique prefix; {_listing(runs)}")
    exact = [rd for rd in runs if rd.run_id == run_id]
    matches = exact or [rd for rd in runs if rd.run_id.startswith(run_id)]
    if not matches:
        raise HpcllmError(f"no run {run_id!r} under {root}; {_listing(runs)}")
    if len(matches) > 1:
        raise HpcllmError(
            f"run id {run_id!r} matches {len(matches)} runs under {root}, so it names none: "
            f"{_names(matches)}; give more of the id"
        )
    return matches[0]


def _listing(runs: list[RunDir]) -> str:
    return f"runs there: {_names(runs)}" if runs else "there are no runs there"


def _names(runs: list[RunDir]) -> str:
    shown = ", ".join(str(rd.path) for rd in runs[:SHOWN])
    return shown + (f", and {len(runs) - SHOWN} more" if len(runs) > SHOWN else "")

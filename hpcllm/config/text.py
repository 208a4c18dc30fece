"""String types for values that end up in a batch script.

Jinja's ``q`` filter shell-quotes every value, but ``#SBATCH`` lines are comments to bash: a value
with a newline ends its comment line, and whatever follows runs as a shell command even inside the
quotes (``--partition='x`` / ``touch /tmp/pwned`` / ``#'``). So values that reach ``#SBATCH`` lines
or the script's own lines must be one line, checked where they are declared.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SHELL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def one_line(value: str) -> str:
    """``value`` if it has no newline, tab or other control character, else ValueError naming it."""
    bad = _CONTROL.search(value)
    if bad:
        raise ValueError(f"must be one line of printable text; found {bad.group()!r} at position {bad.start()}")
    return value


def shell_variable_name(value: str) -> str:
    """A name ``export NAME=...`` accepts in bash: ASCII letters, digits and _, not starting with a digit."""
    if not _SHELL_NAME.match(value):
        raise ValueError(
            f"{value!r} is not a valid shell variable name (ASCII letters, digits, _; not starting with a digit)"
        )
    return value


def sbatch_option(value: str) -> str:
    """One ``sbatch`` option as written after ``#SBATCH``: one line, starting with ``-``."""
    one_line(value)
    if not value.startswith("-"):
        raise ValueError(f"{value!r} is not an sbatch option; write it as on the command line, e.g. --constraint=gpu")
    return value


OneLine = Annotated[str, AfterValidator(one_line)]
SbatchOption = Annotated[str, AfterValidator(sbatch_option)]

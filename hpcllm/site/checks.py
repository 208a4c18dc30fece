"""One finding of ``hpcllm doctor``: what was checked, its status, what was seen and the fix."""

from __future__ import annotations

from dataclasses import dataclass

OK, FAIL, WARN, SKIP = "ok", "fail", "warn", "skip"


@dataclass(frozen=True)
class Check:
    area: str
    name: str
    status: str  # ok | fail | warn | skip
    detail: str
    fix: str = ""

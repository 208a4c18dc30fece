"""Which micro-batch size to try next: doubling, then bisection (torch-free, a pure function).

The next size depends only on the trials so far, so a probe that was preempted or crashed resumes
from ``probe.json`` and takes exactly the path it would have taken, and two probes that see the
same fits and misses give the same answer.

- Nothing tried: the start (explore-batch passes the estimate's largest fit).
- Nothing fitted yet: halve the smallest size that did not fit.
- No miss yet: double the largest fit (up to ``max_mbs``), unless throughput stopped improving.
- A fit below a miss: bisect between the largest fit and the smallest miss, unless the last
  step up gained too little; stop when they are neighbours.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hpcllm.config.probe import ProbeTrial, StopReason


@dataclass(frozen=True)
class Decision:
    """The next size to try, or None with the reason the search is over."""

    next_mbs: int | None
    stop_reason: StopReason | None = None


def next_size(trials: Sequence[ProbeTrial], *, start: int, max_mbs: int, min_gain: float | None) -> Decision:
    if not trials:
        return Decision(start)
    fitted = {t.mbs: t for t in trials if t.fits}
    misses = [t.mbs for t in trials if not t.fits]
    smallest_miss = min(misses) if misses else None
    below = [m for m in fitted if smallest_miss is None or m < smallest_miss]
    if not below:
        if smallest_miss is None or smallest_miss <= 1:
            return Decision(None, "nothing fits")
        return Decision(smallest_miss // 2)
    largest = max(below)
    if _gain_too_small(fitted, largest, min_gain):
        return Decision(None, "throughput")
    if smallest_miss is None:
        if largest >= max_mbs:
            return Decision(None, "max_mbs")
        return Decision(min(2 * largest, max_mbs))
    if smallest_miss - largest <= 1:
        return Decision(None, "memory")
    return Decision((largest + smallest_miss) // 2)


def _gain_too_small(fitted: dict[int, ProbeTrial], largest: int, min_gain: float | None) -> bool:
    """Did going from the next smaller fitted size up to ``largest`` gain less than ``min_gain``?"""
    smaller = [m for m in fitted if m < largest]
    if min_gain is None or not smaller:
        return False
    now, before = fitted[largest].samples_per_s_per_gpu, fitted[max(smaller)].samples_per_s_per_gpu
    if now is None or before is None:
        return False
    return now < before * (1.0 + min_gain)

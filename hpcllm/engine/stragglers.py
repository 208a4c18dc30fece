"""Stragglers: ranks whose own compute is consistently slower than the median rank's.

Each heartbeat carries ``probe_tflops``, a small GEMM the rank timed alone (hpcllm.engine.nodeprobe)
when it wrote the heartbeat. Rank 0's watchdog thread reads the heartbeats every
``watchdog.heartbeat_every_s`` and flags a rank below ``(1 - straggler_margin)`` of the median in
``straggler_checks`` consecutive fresh readings: one slow reading is noise (a neighbour's burst, a
checkpoint write), a run of them is a throttled GPU or a starved node. A flagged rank that recovers
stays in the record with ``recovered`` set: the report should show that it happened.
"""

from __future__ import annotations

import statistics
import time
from typing import Any


def slow_ranks(probes: dict[int, float], margin: float) -> dict[int, float]:
    """rank -> its ratio to the median, for the ranks below ``1 - margin`` of it (needs 2+ ranks)."""
    if len(probes) < 2:
        return {}
    median = statistics.median(probes.values())
    if median <= 0:
        return {}
    return {r: v / median for r, v in probes.items() if v < (1 - margin) * median}


class StragglerTracker:
    """Consecutive slow readings per rank, and the ranks flagged so far."""

    def __init__(self, margin: float, checks: int) -> None:
        self.margin = margin
        self.checks = checks
        self._streak: dict[int, int] = {}
        self._seen: dict[int, float] = {}  # rank -> time of the heartbeat last counted
        self.flagged: dict[int, dict[str, Any]] = {}

    def update(self, heartbeats: dict[int, dict[str, Any]]) -> bool:
        """Count the heartbeats written since the last call; True when the flagged set changed."""
        fresh = {
            r: hb
            for r, hb in heartbeats.items()
            if hb.get("probe_tflops") is not None and hb.get("time", 0) > self._seen.get(r, 0)
        }
        if not fresh:
            return False
        self._seen.update({r: hb["time"] for r, hb in fresh.items()})
        slow = slow_ranks(
            {r: hb["probe_tflops"] for r, hb in heartbeats.items() if hb.get("probe_tflops")}, self.margin
        )
        changed = False
        for r in fresh:
            self._streak[r] = self._streak.get(r, 0) + 1 if r in slow else 0
            if self._streak[r] >= self.checks and (r not in self.flagged or self.flagged[r].get("recovered")):
                hb = heartbeats[r]
                self.flagged[r] = {"rank": r, "node": hb.get("node"), "ratio": round(slow[r], 3), "since": time.time()}
                changed = True
            elif r in self.flagged and r in slow:
                self.flagged[r]["ratio"] = round(min(self.flagged[r]["ratio"], slow[r]), 3)
            elif r in self.flagged and r not in slow and not self.flagged[r].get("recovered"):
                self.flagged[r]["recovered"] = time.time()
                changed = True
        return changed

    def record(self) -> dict[str, Any]:
        """What ``stragglers.json`` and summary.json's ``stragglers`` hold."""
        return {
            "margin": self.margin,
            "checks": self.checks,
            "ranks": [self.flagged[r] for r in sorted(self.flagged)],
        }

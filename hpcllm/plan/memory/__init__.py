"""What a run costs in bytes, torch-free: the login node plans with it before anything runs.

Next to ``hpcllm.perf`` (what a config costs in FLOPs). ``checkpoint_bytes`` is the one place that
knows how large a DCP checkpoint is; ``estimate_memory`` breaks one rank's memory into terms
(docs/memory.md). ``submit``'s checks, ``hpcllm model info`` and the batch-size probe use them.
"""

from hpcllm.plan.memory.checkpoint import checkpoint_bytes
from hpcllm.plan.memory.estimate import (
    GIB,
    MemoryEstimate,
    MemorySpec,
    Term,
    estimate_memory,
    largest_fitting_mbs,
)

__all__ = [
    "GIB",
    "MemoryEstimate",
    "MemorySpec",
    "Term",
    "checkpoint_bytes",
    "estimate_memory",
    "largest_fitting_mbs",
]

"""The references of one resolved grid point: fixed ones, and the seed's row of the same configuration.

``hpcllm submit`` stores them in each run's manifest (``hpcllm.config.references`` is the schema).
"""

from __future__ import annotations

from hpcllm.config.experiment import RunSpec
from hpcllm.config.references import ClusterReferences, Reference, Tolerance
from hpcllm.plan.seed import SeedKey, best_row


def seed_key_of_spec(spec: RunSpec) -> SeedKey:
    t, p, m = spec.training.train, spec.training.parallel, spec.training.model
    assert t.global_batch_size is not None  # filled in when the point was resolved
    return SeedKey(
        spec.cluster,
        m.n_params(),
        spec.world_size,
        t.grad_accum,
        t.micro_batch_size,
        t.global_batch_size,
        m.seq_len,
        p.precision,
        p.sharding,
        p.activation_checkpointing,
    )


def references_for_point(refs: ClusterReferences | None, spec: RunSpec) -> tuple[dict[str, Reference], bool]:
    """The references of one grid point, and whether a ``seed:`` request found no seed row for it."""
    if refs is None:
        return {}, False
    out = refs.fixed()
    if refs.seed is None:
        return out, False
    row = best_row(seed_key_of_spec(spec))
    if row is None:
        return out, True
    for metric in ("samples_per_s", "mfu"):
        tolerance: Tolerance | None = getattr(refs.seed, metric)
        if tolerance is not None:
            out[metric] = tolerance.around(getattr(row, metric), row.source)
    return out, False

"""The scaling experiments cover every row of the seed's tables (Modalities README, "Scaling
Experiments") on the cluster it ran on, each point with a QoS that admits it, or refused with the
limit where only a larger allocation can run it (MareNostrum 5 beyond acc_ehpc's 100 nodes)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from hpcllm.config.cluster import load_cluster
from hpcllm.config.experiment import RunSpec, load_experiment
from hpcllm.plan.expand import expand_experiment
from hpcllm.plan.qos import RefusedPoint, qos_refusal

# The seed's rows, copied from its tables: params (B), #GPUs, MBS, GBS, sequence length, sharding, AC.
# (MareNostrum 5 lists the 28B run on 512 GPUs twice: two measurements of one configuration.)
SEED_ROWS = {
    "leonardo": """
    2.7 8 2 16 4096 FULL_SHARD False | 2.7 8 2 16 4096 HYBRID_SHARD False | 2.7 16 2 32 4096 HYBRID_SHARD False
    2.7 16 2 32 4096 FULL_SHARD False | 2.7 32 2 64 4096 HYBRID_SHARD False | 2.7 32 2 64 4096 FULL_SHARD False
    2.7 64 2 128 4096 FULL_SHARD False | 2.7 64 2 128 4096 HYBRID_SHARD False | 2.7 128 2 256 4096 HYBRID_SHARD False
    2.7 128 2 256 4096 FULL_SHARD False | 2.7 256 2 512 4096 HYBRID_SHARD False | 2.7 256 2 512 4096 FULL_SHARD False
    2.7 8 4 32 4096 FULL_SHARD False | 2.7 16 4 64 4096 FULL_SHARD False | 2.7 32 4 128 4096 FULL_SHARD False
    2.7 64 4 256 4096 FULL_SHARD False | 2.7 128 4 512 4096 FULL_SHARD False | 2.7 256 4 1024 4096 FULL_SHARD False
    6.7 8 2 16 4096 FULL_SHARD False | 6.7 16 2 32 4096 FULL_SHARD False | 6.7 32 2 64 4096 FULL_SHARD False
    6.7 64 2 128 4096 FULL_SHARD False | 6.7 128 2 256 4096 FULL_SHARD False | 6.7 256 2 512 4096 FULL_SHARD False
    """,
    "marenostrum5": """
    2.7 4 2 8 4096 FULL_SHARD False | 2.7 4 2 8 4096 HYBRID_SHARD False | 2.7 8 2 16 4096 HYBRID_SHARD False
    2.7 8 2 16 4096 FULL_SHARD False | 2.7 16 2 32 4096 HYBRID_SHARD False | 2.7 16 2 32 4096 FULL_SHARD False
    2.7 32 2 64 4096 HYBRID_SHARD False | 2.7 32 2 64 4096 FULL_SHARD False | 2.7 64 2 128 4096 FULL_SHARD False
    2.7 64 2 128 4096 HYBRID_SHARD False | 2.7 128 2 256 4096 FULL_SHARD False | 2.7 256 2 512 4096 FULL_SHARD False
    2.7 512 2 1024 4096 HYBRID_SHARD False | 2.7 512 2 1024 4096 FULL_SHARD False
    2.7 1024 2 2048 8192 FULL_SHARD False | 2.7 1024 2 2048 4096 HYBRID_SHARD False
    28 16 1 16 8192 FULL_SHARD True | 28 32 1 32 8192 FULL_SHARD True | 28 64 1 64 8192 FULL_SHARD True
    28 128 1 128 8192 FULL_SHARD True | 28 256 1 256 8192 FULL_SHARD True | 28 512 1 512 8192 FULL_SHARD True
    28 512 1 512 8192 FULL_SHARD True | 28 1024 1 1024 8192 FULL_SHARD True | 28 2048 1 2048 8192 FULL_SHARD True
    """,
}
EXPERIMENT_OF = {"2.7": "scaling_2.7b.yaml", "6.7": "scaling_6.7b.yaml", "28": "scaling_28b.yaml"}
GPUS_PER_NODE = 4


def seed_rows(cluster: str) -> set[tuple[str, int, int, int, int, str, bool]]:
    rows = set()
    for text in SEED_ROWS[cluster].replace("\n", "|").split("|"):
        if text.strip():
            p, gpus, mbs, gbs, seq, sharding, ac = text.split()
            rows.add((p, int(gpus), int(mbs), int(gbs), int(seq), sharding, ac == "True"))
    return rows


def row_of(params: str, spec: RunSpec) -> tuple[str, int, int, int, int, str, bool]:
    t = spec.training
    return (
        params,
        spec.world_size,
        t.train.micro_batch_size,
        t.train.global_batch_size or 0,
        t.model.seq_len,
        t.parallel.sharding,
        t.parallel.activation_checkpointing != "none",
    )


def expand(experiment: str, cluster, refused: list[RefusedPoint] | None = None) -> list[RunSpec]:
    path = Path("experiments") / experiment
    return expand_experiment(load_experiment(path), cluster, str(path), account="acct", refused=refused)


@pytest.mark.parametrize("cluster_name", ["leonardo", "marenostrum5"])
def test_every_seed_row_is_a_point_of_its_experiment(in_project, cluster_name: str) -> None:
    cluster = load_cluster(cluster_name)
    # A larger allocation (as the seed had on MareNostrum 5): every row then runs.
    big = cluster.model_copy(
        update={
            "qos": {
                name: spec.model_copy(update={"max_nodes": None}) if name in cluster.auto_qos else spec
                for name, spec in cluster.qos.items()
            }
        }
    )
    wanted = seed_rows(cluster_name)
    covered = set()
    for params in sorted({row[0] for row in wanted}):
        for spec in expand(EXPERIMENT_OF[params], big):
            assert spec.resources.gpus_per_node == GPUS_PER_NODE
            covered.add(row_of(params, spec))
    assert wanted <= covered, sorted(wanted - covered)


def test_leonardo_grids_are_exactly_the_seed_rows_each_in_an_admitting_qos(in_project) -> None:
    leo = load_cluster("leonardo")
    rows = []
    for params, experiment in (("2.7", "scaling_2.7b.yaml"), ("6.7", "scaling_6.7b.yaml")):
        refused: list[RefusedPoint] = []
        for spec in expand(experiment, leo, refused):
            assert spec.resources.qos in leo.auto_qos
            assert (
                qos_refusal(spec.resources.qos, leo.qos[spec.resources.qos], spec.resources.nodes, spec.resources.time)
                is None
            )
            rows.append(row_of(params, spec))
        assert refused == []
    assert Counter(rows) == Counter(seed_rows("leonardo"))  # no row twice, none the seed lacks


def test_marenostrum5_rows_beyond_acc_ehpc_are_refused_with_the_limit(in_project) -> None:
    mn5 = load_cluster("marenostrum5")
    runnable, refused_nodes = set(), []
    for params, experiment in (("2.7", "scaling_2.7b.yaml"), ("28", "scaling_28b.yaml")):
        refused: list[RefusedPoint] = []
        for spec in expand(experiment, mn5, refused):
            assert spec.resources.qos == "acc_ehpc" and spec.resources.nodes <= 100
            runnable.add(row_of(params, spec))
        for r in refused:
            assert "no QoS of 'marenostrum5' admits" in r.reason and "acc_ehpc allows at most 100 nodes" in r.reason
            refused_nodes.append((params, r.point["resources.nodes"]))
    small = {row for row in seed_rows("marenostrum5") if row[1] <= 100 * GPUS_PER_NODE}
    assert runnable == small
    assert sorted(refused_nodes) == [
        ("2.7", 128),
        ("2.7", 128),
        ("2.7", 256),
        ("2.7", 256),
        ("28", 128),
        ("28", 256),
        ("28", 512),
    ]


def test_scaling_grids_keep_one_checkpoint_and_skip_the_final_one(in_project) -> None:
    for experiment in EXPERIMENT_OF.values():
        for spec in expand(experiment, load_cluster("leonardo"), []):
            assert spec.training.checkpoint.keep_last == 1 and spec.training.checkpoint.at_end is False

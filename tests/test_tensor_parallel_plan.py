"""parallel.tensor_parallel on the login side: the grid, the run id, the global batch, the fit."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hpcllm.config.cluster import load_cluster
from hpcllm.config.experiment import Experiment, RunSpec, load_experiment
from hpcllm.config.model import ModelConfig
from hpcllm.config.training import ParallelConfig
from hpcllm.errors import ConfigError
from hpcllm.plan.expand import expand_experiment
from hpcllm.plan.memory import MemorySpec, estimate_memory

BASE = {
    "name": "tp",
    "resources": {"nodes": 2, "time": "00:30:00"},
    "training": {"model": {"preset": "6.7b"}, "data": {"path": "/data/store"}},
}


def _expand(grid: dict[str, list[object]]) -> dict[int, object]:
    exp = Experiment.model_validate({**BASE, "grid": grid})
    specs = expand_experiment(exp, load_cluster("leonardo"), "tp.yaml")
    return {s.training.parallel.tensor_parallel: s for s in specs}


def test_tensor_parallel_is_a_grid_axis_with_its_run_id_and_batch() -> None:
    specs = _expand({"parallel.tensor_parallel": [1, 4]})
    plain, tp4 = specs[1], specs[4]
    assert "-tp" not in plain.run_id  # TP 1: the id of a run before tensor parallelism existed
    assert "-tp4-" in tp4.run_id and tp4.world_size == plain.world_size == 8  # ranks per node unchanged
    assert (plain.training.train.global_batch_size, tp4.training.train.global_batch_size) == (16, 4)
    assert yaml.safe_load(yaml.safe_dump(tp4.training.model_dump(mode="json")))["parallel"]["tensor_parallel"] == 4


def test_tensor_parallel_beyond_a_node_is_refused_with_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"parallel\.tensor_parallel: 8 does not divide the 4 GPUs per node"):
        _expand({"parallel.tensor_parallel": [8]})


def test_the_estimate_splits_blocks_over_tp() -> None:
    """Block weights and activations shrink about tp-fold; what stays whole (head, loss) does not."""
    model = ModelConfig.from_name("28b")

    def estimate(tp: int, world: int) -> object:
        par = ParallelConfig(tensor_parallel=tp, activation_checkpointing="none")  # type: ignore[arg-type]
        return estimate_memory(MemorySpec(model, par, 1, world_size=world, ranks_per_node=4))

    fsdp, tp4 = estimate(1, 64), estimate(4, 64)
    # FSDP shards over 64 ranks; TP 4 x DP 16 holds 1/4 of each block over 16: the same share of
    # blocks, while the (tied) embedding, whole on the TP ranks, is sharded over 16 instead of 64.
    embedding = model.vocab_size * model.d_model * 4
    extra = tp4.term("weights").bytes - fsdp.term("weights").bytes  # type: ignore[attr-defined]
    assert extra == pytest.approx(embedding * (1 / 16 - 1 / 64), rel=0.01)
    act_ratio = tp4.term("activations").bytes / fsdp.term("activations").bytes  # type: ignore[attr-defined]
    assert 0.25 < act_ratio < 0.5  # 1/4, plus the gathered matmul inputs and the unsplit head's
    assert tp4.term("loss").bytes == fsdp.term("loss").bytes  # type: ignore[attr-defined]
    assert tp4.peak_bytes < fsdp.peak_bytes  # type: ignore[attr-defined]


@pytest.mark.parametrize("cluster", ["leonardo", "marenostrum5"])
def test_the_28b_tp_grid_sits_beside_the_seeds_fsdp_rows(cluster: str) -> None:
    """Every TP point has a pure-FSDP point of experiments/scaling_28b.yaml with the same GPUs and
    global batch, so one table compares them; the two differ in the run id."""
    root = Path(__file__).resolve().parents[1] / "experiments"
    profile = load_cluster(cluster)

    def specs(name: str) -> list[RunSpec]:
        path = root / name
        return expand_experiment(load_experiment(path), profile, str(path), account="acct", refused=[])

    fsdp = {(s.world_size, s.training.train.global_batch_size): s for s in specs("scaling_28b.yaml")}
    tp = specs("scaling_28b_tp.yaml")
    assert {s.training.parallel.activation_checkpointing for s in tp} == {"full", "selective", "none"}
    for spec in tp:
        assert spec.training.parallel.tensor_parallel == 4 and "-tp4-" in spec.run_id
        twin = fsdp[(spec.world_size, spec.training.train.global_batch_size)]
        assert twin.training.parallel.tensor_parallel == 1 and twin.resources.nodes == spec.resources.nodes

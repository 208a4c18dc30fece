"""Submit-time memory check and the ``fits`` / ``mem_gib`` names of ``where:`` filters (no torch)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from hpcllm.cli import app
from hpcllm.config.cluster import load_cluster
from hpcllm.config.experiment import load_experiment
from hpcllm.errors import ConfigError
from hpcllm.launch.memcheck import split_by_fit
from hpcllm.launch.orchestrate import submit_experiment
from hpcllm.plan.expand import expand_experiment
from hpcllm.plan.memory import estimate_memory
from hpcllm.plan.memory.runs import run_spec

SCALING = Path("experiments/scaling_2.7b.yaml")


def estimate_gib(spec, cluster) -> float:
    return estimate_memory(
        run_spec(spec.training, nodes=spec.resources.nodes, gpus_per_node=spec.resources.gpus_per_node, cluster=cluster)
    ).peak_gib


SEED_EXPERIMENTS = ["scaling_2.7b", "scaling_6.7b", "scaling_28b"]
HEADROOM = 0.05  # issue 20: every seed row fits its GPU with at least 5 % to spare


def _scaling(tmp_path: Path, mbs: list[int], where: str | None = None) -> Path:
    """The 2.7b scaling experiment with other micro-batch sizes (and ``where`` added to its filters)."""
    exp = yaml.safe_load(SCALING.read_text())
    exp["grid"]["train.micro_batch_size"] = mbs
    if where is not None:
        exp["where"] = [*exp["where"], where]
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(exp))
    return path


@pytest.mark.parametrize("cluster_name", ["leonardo", "marenostrum5"])
@pytest.mark.parametrize("name", SEED_EXPERIMENTS)
def test_every_seed_row_fits_its_cluster_with_headroom(in_project: Path, name: str, cluster_name: str) -> None:
    """Each row of the seed's tables, on the cluster that ran it with its own configuration (2.7b
    MBS 4 without checkpointing on 8 A100s was 75.7 GiB before the engine was made lean)."""
    cluster = load_cluster(cluster_name)
    assert cluster.gpu_memory_gib is not None
    specs = expand_experiment(load_experiment(Path(f"experiments/{name}.yaml")), cluster, "x", account="a", refused=[])
    fitting, unfit = split_by_fit(specs, cluster)
    assert specs and not unfit, [u.reason for u in unfit]
    worst = max(estimate_gib(s, cluster) for s in fitting)
    assert worst <= (1 - HEADROOM) * cluster.gpu_memory_gib, worst


def test_2_7b_at_mbs_8_does_not_fit_64_gib_and_the_reason_names_the_largest_mbs(
    in_project: Path, tmp_path: Path
) -> None:
    """32 blocks keep ~32.3 bytes per token per hidden unit in bf16 (docs/memory.md): 84 GiB of
    activations at MBS 8 x 4096 tokens."""
    cluster = load_cluster("leonardo")
    specs = expand_experiment(load_experiment(_scaling(tmp_path, [2, 8])), cluster, "x")
    fitting, unfit = split_by_fit(specs, cluster)
    assert {s.training.train.micro_batch_size for s in fitting} == {2}
    assert {u.spec.training.train.micro_batch_size for u in unfit} == {8}
    assert len(fitting) + len(unfit) == len(specs) == 18
    for u in unfit:
        assert u.estimate.peak_gib > 64 and u.largest_mbs in (4, 5)  # 5 from 32 GPUs on (docs/memory.md)
        assert u.reason.startswith(f"needs {u.estimate.peak_gib:.1f} of 64 GiB (activations 84.0")
        assert u.reason.endswith(f"MBS <= {u.largest_mbs} fits")


def test_points_differing_only_in_what_memory_ignores_share_one_estimate(
    in_project: Path, tmp_path: Path, monkeypatch
) -> None:
    """4 setups (nodes x MBS) x 3 learning rates: 4 estimates, and each point's verdict is the one
    its own estimate gives."""
    import hpcllm.launch.memcheck as memcheck

    exp = yaml.safe_load(SCALING.read_text())
    exp["grid"] = {"resources.nodes": [2, 4], "train.micro_batch_size": [2, 8], "optim.lr": [1e-4, 2e-4, 3e-4]}
    exp.pop("where")
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(exp))
    calls: list[int] = []

    def counting(spec):
        calls.append(spec.micro_batch_size)
        return estimate_memory(spec)

    monkeypatch.setattr(memcheck, "estimate_memory", counting)
    cluster = load_cluster("leonardo")
    specs = expand_experiment(load_experiment(path), cluster, "x")
    fitting, unfit = split_by_fit(specs, cluster)
    assert len(specs) == 12 and sorted(calls) == [2, 2, 8, 8]
    assert len(unfit) == 6 and all(u.estimate.peak_gib == estimate_gib(u.spec, cluster) > 64 for u in unfit)
    assert len(fitting) == 6 and all(estimate_gib(s, cluster) <= 64 for s in fitting)


def test_nothing_fits_names_the_remedies(in_project: Path, tmp_path: Path) -> None:
    exp = yaml.safe_load(SCALING.read_text())
    exp["training"]["model"] = {"preset": "28b"}
    exp["grid"] = {"resources.nodes": [1]}
    exp.pop("where")
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(exp))
    cluster = load_cluster("leonardo")
    _, unfit = split_by_fit(expand_experiment(load_experiment(path), cluster, "x"), cluster)
    assert len(unfit) == 1 and unfit[0].largest_mbs == 0
    assert "not even MBS 1 fits: activation checkpointing, more GPUs or cpu_offload" in unfit[0].reason


def test_submit_skips_unfit_points_and_no_memory_check_keeps_them(in_project: Path, tmp_path: Path) -> None:
    path = _scaling(tmp_path, [2, 8])
    checked = submit_experiment(path, "leonardo", tmp_path / "a", dry_run=True)
    assert len(checked.runs) == 12 and len(checked.unfit) == 6
    rendered = {p.name for p in (tmp_path / "a" / "scaling_2.7b" / "leonardo").iterdir() if p.is_dir()}
    assert rendered == {r.spec.run_id for r in checked.runs}  # nothing of the skipped points is written
    unchecked = submit_experiment(path, "leonardo", tmp_path / "b", dry_run=True, memory_check=False)
    assert len(unchecked.runs) == 18 and not unchecked.unfit


def test_submit_prints_the_reasons(in_project: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["submit", str(_scaling(tmp_path, [2, 8])), "--cluster", "leonardo", "--dry-run", "--results", str(tmp_path)],
        env={"COLUMNS": "250"},
    )
    assert result.exit_code == 3, result.output  # some points left out, the others rendered
    assert "6 points skipped: estimated over the GPU memory (--no-memory-check submits them)" in result.output
    assert "MBS <= 4 fits" in result.output and "MBS <= 5 fits" in result.output


def test_profile_without_gpu_memory_checks_nothing_and_says_so(in_project: Path, tmp_path: Path) -> None:
    profile = yaml.safe_load(Path("clusters/leonardo.yaml").read_text())
    profile.pop("gpu_memory_gib")
    (tmp_path / "nomem.yaml").write_text(yaml.safe_dump(profile))
    cluster = load_cluster(str(tmp_path / "nomem.yaml"))
    assert cluster.gpu_memory_gib is None
    specs = expand_experiment(load_experiment(SCALING), cluster, "x")
    assert split_by_fit(specs, cluster) == (specs, [])


def _with_where(tmp_path: Path, where: str) -> Path:
    """The scaling experiment with ``where`` added to its own filters (each cluster's seed rows)."""
    exp = yaml.safe_load(SCALING.read_text())
    exp["where"] = [*exp["where"], where]
    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump(exp))
    return path


def test_where_fits_keeps_the_points_the_check_would_submit(in_project: Path, tmp_path: Path) -> None:
    cluster = load_cluster("leonardo")
    specs = expand_experiment(load_experiment(_scaling(tmp_path, [2, 8], "fits")), cluster, "x")
    # 6 node counts x 2 shardings x MBS {2, 8}: the 12 MBS 2 points; no MBS 8 point fits, HYBRID or FULL.
    assert len(specs) == 12 and {s.training.train.micro_batch_size for s in specs} == {2}
    assert all(estimate_gib(s, cluster) <= 64 for s in specs)


def test_where_mem_gib_is_the_estimate(in_project: Path, tmp_path: Path) -> None:
    cluster = load_cluster("leonardo")
    specs = expand_experiment(load_experiment(_with_where(tmp_path, "mem_gib < 40")), cluster, "x")
    everything = expand_experiment(load_experiment(_with_where(tmp_path, "True")), cluster, "x")
    assert specs and len(specs) < len(everything)
    assert {s.run_id for s in specs} == {s.run_id for s in everything if estimate_gib(s, cluster) < 40}


def test_where_on_memory_errors_name_the_file(in_project: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="where: cannot evaluate 'mem_gib < \"a\"'"):
        expand_experiment(load_experiment(_with_where(tmp_path, 'mem_gib < "a"')), load_cluster("leonardo"), "w.yaml")

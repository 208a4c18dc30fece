"""The pre-flight without a scheduler: the verdict from per-rank figures, the choice of nodes, the
profile's default and the rendered script. On the real local SLURM: test_slurm_preflight.py."""

from __future__ import annotations

import itertools
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from hpcllm.cli import app
from hpcllm.config.cluster import load_cluster
from hpcllm.config.experiment import load_experiment
from hpcllm.engine.preflight import FAULT_SLOW_ENV, round_robin, slow_factor, summarise
from hpcllm.errors import ConfigError
from hpcllm.launch.preflight import choose
from hpcllm.launch.render import render_job
from hpcllm.plan.expand import expand_experiment
from hpcllm.rundir import RunDir

REPO = Path(__file__).resolve().parents[1]


def facts(rank: int, node: str, gemm: float, links: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "rank": rank, "node": node, "gemm_tflops": gemm, "memory_gbs": 10.0, "intra_busbw_gbs": None,
        "links": links or [], "timings": {},
    }  # fmt: skip


def test_a_node_below_the_fraction_of_the_median_is_named() -> None:
    verdict = summarise(
        [facts(0, "n1", 100.0), facts(1, "n2", 95.0), facts(2, "n3", 40.0), facts(3, "n4", 105.0)],
        ["n1", "n2", "n3", "n4"], inter=5.0, min_fraction=0.7, elapsed=2.0, device="cpu",
    )  # fmt: skip
    assert list(verdict["slow_nodes"]) == ["n3"] and "gemm_tflops" in verdict["slow_nodes"]["n3"]
    assert verdict["elapsed_s_per_node"] == 0.5
    assert choose(["n1", "n2", "n3", "n4"], verdict, 3) == ["n1", "n2", "n4"]
    assert choose(["n1", "n2", "n3", "n4"], verdict, 4) == ["n1", "n2", "n3", "n4"]  # no spare: it trains
    assert choose(["n1", "n2", "n3"], None, 2) == ["n1", "n2"]  # no verdict: the first nodes


def test_a_node_whose_every_link_is_slow_is_named_not_its_peers() -> None:
    gbs = {("n1", "n2"): 10.0, ("n1", "n3"): 1.0, ("n2", "n3"): 1.2, ("n1", "n4"): 9.0, ("n2", "n4"): 11.0}
    gbs[("n3", "n4")] = 0.9
    links = [{"a": a, "b": b, "gbs": v} for (a, b), v in gbs.items()]
    verdict = summarise(
        [facts(0, "n1", 100.0, links), facts(1, "n2", 100.0), facts(2, "n3", 100.0), facts(3, "n4", 100.0)],
        ["n1", "n2", "n3", "n4"], inter=None, min_fraction=0.7, elapsed=1.0, device="cpu",
    )  # fmt: skip
    assert list(verdict["slow_nodes"]) == ["n3"] and len(verdict["slow_links"]) == 3


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_pairwise_rounds_cover_every_pair_once_with_disjoint_pairs(n: int) -> None:
    rounds = round_robin(list(range(n)))
    pairs = [p for r in rounds for p in r]
    assert sorted(pairs) == list(itertools.combinations(range(n), 2))
    assert all(len({x for p in r for x in p}) == 2 * len(r) for r in rounds)


def test_slow_node_fault_by_name_or_index(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(FAULT_SLOW_ENV, raising=False)
    assert slow_factor("n2", ["n1", "n2"]) == 1
    monkeypatch.setenv(FAULT_SLOW_ENV, "#1:5")
    assert (slow_factor("n2", ["n1", "n2"]), slow_factor("n1", ["n1", "n2"])) == (5, 1)
    monkeypatch.setenv(FAULT_SLOW_ENV, "n1")
    assert slow_factor("n1", ["n1", "n2"]) == 8
    monkeypatch.setenv(FAULT_SLOW_ENV, "#7")
    with pytest.raises(ConfigError, match=FAULT_SLOW_ENV):
        slow_factor("n1", ["n1", "n2"])


def render(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, from_nodes: int | None = None, **resources: Any) -> str:
    monkeypatch.setenv("HPCLLM_CLUSTERS_DIR", str(REPO / "clusters"))
    cluster = load_cluster("localslurm").model_copy(update={"preflight_from_nodes": from_nodes})
    exp = load_experiment(REPO / "experiments" / "smoke.yaml")
    exp = exp.model_copy(update={"resources": exp.resources.model_copy(update={"nodes": 2, **resources})})
    spec = expand_experiment(exp, cluster, "smoke.yaml")[0]
    text = render_job(spec, cluster, RunDir.of(tmp_path, "smoke", cluster.name, spec.run_id), account=None)
    (tmp_path / "job.sh").write_text(text)
    subprocess.run(["bash", "-n", str(tmp_path / "job.sh")], check=True)
    return text


def test_spare_nodes_allocate_more_and_train_on_the_chosen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = render(tmp_path, monkeypatch, spare_nodes=1)
    assert "#SBATCH --nodes=3" in text and "-m hpcllm.engine.preflight" in text
    assert "--nnodes=2 " in text and '--nodelist="$TRAIN_NODES"' in text
    plain = render(tmp_path, monkeypatch)  # localslurm sets no preflight_from_nodes: off by default
    assert "#SBATCH --nodes=2" in plain and "hpcllm.engine.preflight" not in plain
    with pytest.raises(ConfigError, match="spare_nodes"):
        render(tmp_path, monkeypatch, spare_nodes=1, preflight=False)


def test_the_profile_turns_it_on_from_a_node_count_and_the_flag_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert "hpcllm.engine.preflight" in render(tmp_path, monkeypatch, from_nodes=2)
    assert "hpcllm.engine.preflight" not in render(tmp_path, monkeypatch, from_nodes=3)  # a 2-node job
    assert "hpcllm.engine.preflight" not in render(tmp_path, monkeypatch, from_nodes=2, preflight=False)


def test_submit_flags_reach_the_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HPCLLM_CLUSTERS_DIR", str(REPO / "clusters"))
    # smoke.yaml's data path must exist (submit refuses missing inputs on local clusters): a stand-in here.
    doc = yaml.safe_load((REPO / "experiments" / "smoke.yaml").read_text())
    (tmp_path / "store").mkdir()
    doc["training"]["data"]["path"] = str(tmp_path / "store")
    exp = tmp_path / "smoke.yaml"
    exp.write_text(yaml.safe_dump(doc))
    args = ["submit", str(exp), "--cluster", "localslurm", "--dry-run", "--results", str(tmp_path / "r")]
    result = CliRunner().invoke(app, [*args, "--spare-nodes", "1"])
    assert result.exit_code == 0, result.output
    scripts = [p.read_text() for p in (tmp_path / "r").rglob("job.sbatch")]
    assert scripts and all("#SBATCH --nodes=2" in t and "hpcllm.engine.preflight" in t for t in scripts)
    refused = CliRunner().invoke(app, [*args, "--spare-nodes", "1", "--no-preflight"])
    assert refused.exit_code == 2 and "resources.spare_nodes" in refused.output
    local = CliRunner().invoke(app, [*args[:3], "local", *args[4:], "--preflight"])
    assert local.exit_code == 2 and "SLURM clusters only" in local.output

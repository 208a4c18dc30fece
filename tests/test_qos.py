"""QoS facts and limits: minimum and maximum nodes, automatic choice, refusal with the limit that refuses."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hpcllm.config.cluster import ClusterProfile, load_cluster, parse_slurm_time
from hpcllm.config.experiment import load_experiment
from hpcllm.config.loader import load_model
from hpcllm.errors import ConfigError
from hpcllm.plan.expand import expand_experiment
from hpcllm.plan.qos import RefusedPoint

EXPERIMENT = """
name: e
resources: {time: "00:30:00"}
training:
  model: {preset: tiny}
  data: {path: data/demo}
"""


def _experiment(tmp_path: Path, extra: str) -> Path:
    """EXPERIMENT with the keys of ``extra`` added; its ``resources`` merge into the base's (a YAML
    file may not give a key twice)."""
    doc = yaml.safe_load(EXPERIMENT)
    for key, value in (yaml.safe_load(extra) or {}).items():
        doc[key] = {**doc[key], **value} if key == "resources" else value
    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_leonardo_qos_facts(in_project) -> None:
    leo = load_cluster("leonardo")
    normal, bprod, dbg, lprod = (leo.qos[q] for q in ("normal", "boost_qos_bprod", "boost_qos_dbg", "boost_qos_lprod"))
    assert (normal.min_nodes, normal.max_nodes, parse_slurm_time(normal.max_time)) == (None, 64, 24 * 3600)
    assert (bprod.min_nodes, bprod.max_nodes, parse_slurm_time(bprod.max_time)) == (65, 256, 24 * 3600)
    assert (dbg.max_nodes, parse_slurm_time(dbg.max_time)) == (2, 30 * 60)
    assert (lprod.max_nodes, parse_slurm_time(lprod.max_time)) == (3, 4 * 24 * 3600)
    assert leo.auto_qos == ["normal", "boost_qos_bprod"]


def test_marenostrum5_qos_facts(in_project) -> None:
    mn5 = load_cluster("marenostrum5")
    ehpc, debug = mn5.qos["acc_ehpc"], mn5.qos["acc_debug"]
    assert (ehpc.max_nodes, parse_slurm_time(ehpc.max_time)) == (100, 72 * 3600)  # 8,000 cores / 80 a node
    assert (debug.max_nodes, parse_slurm_time(debug.max_time)) == (8, 2 * 3600)
    assert mn5.auto_qos == ["acc_ehpc"]


def test_each_point_gets_the_qos_that_admits_it(in_project, tmp_path: Path) -> None:
    path = _experiment(tmp_path, "grid: {resources.nodes: [2, 64, 65, 256]}\n")
    specs = expand_experiment(load_experiment(path), load_cluster("leonardo"), str(path))
    assert [(s.resources.nodes, s.resources.qos) for s in specs] == [
        (2, "normal"),
        (64, "normal"),
        (65, "boost_qos_bprod"),
        (256, "boost_qos_bprod"),
    ]


def test_where_sees_the_chosen_qos(in_project, tmp_path: Path) -> None:
    path = _experiment(tmp_path, "grid: {resources.nodes: [2, 65]}\nwhere: \"resources.qos == 'boost_qos_bprod'\"\n")
    specs = expand_experiment(load_experiment(path), load_cluster("leonardo"), str(path))
    assert [s.resources.nodes for s in specs] == [65]


def test_a_point_no_qos_admits_is_refused_with_each_limit(in_project, tmp_path: Path) -> None:
    path = _experiment(tmp_path, "resources: {nodes: 300}\n")
    with pytest.raises(
        ConfigError,
        match=r"point \(base\): resources\.nodes: no QoS of 'leonardo' admits 300 nodes "
        r"for 00:30:00: normal allows at most 64 nodes; boost_qos_bprod allows at most 256 nodes",
    ):
        expand_experiment(load_experiment(path), load_cluster("leonardo"), str(path))
    path = _experiment(tmp_path, "resources: {nodes: 2, time: '2-00:00:00'}\n")
    with pytest.raises(
        ConfigError,
        match=r"no QoS of 'leonardo' admits 2 nodes for 2-00:00:00: normal allows at most "
        r"1-00:00:00; boost_qos_bprod needs at least 65 nodes",
    ):
        expand_experiment(load_experiment(path), load_cluster("leonardo"), str(path))


def test_an_explicit_qos_is_held_to_its_minimum(in_project, tmp_path: Path) -> None:
    path = _experiment(tmp_path, "resources: {nodes: 8, qos: boost_qos_bprod}\n")
    with pytest.raises(
        ConfigError,
        match=r"QoS 'boost_qos_bprod' does not admit 8 nodes for 00:30:00: boost_qos_bprod needs at least 65 nodes",
    ):
        expand_experiment(load_experiment(path), load_cluster("leonardo"), str(path))


def test_refused_points_are_collected_when_the_caller_asks(in_project, tmp_path: Path) -> None:
    path = _experiment(tmp_path, "grid: {resources.nodes: [64, 128]}\n")
    refused: list[RefusedPoint] = []
    specs = expand_experiment(load_experiment(path), load_cluster("marenostrum5"), str(path), refused=refused)
    assert [s.resources.nodes for s in specs] == [64]
    assert [r.point for r in refused] == [{"resources.nodes": 128}]
    assert "acc_ehpc allows at most 100 nodes" in refused[0].reason


@pytest.mark.parametrize(
    "patch,pattern",
    [
        (
            "qos: {a: {max_time: '01:00:00', min_nodes: 9, max_nodes: 8}}\n",
            r"qos\.a: Value error, min_nodes \(9\) > max_nodes \(8\)",
        ),
        ("qos: {a: {max_time: '01:00:00'}}\nauto_qos: [b]\n", r"auto_qos: 'b' is not one of the qos names: a"),
        ("qos: {a: {max_time: '01:00:00'}}\nauto_qos: [a]\ndefault_qos: a\n", r"set default_qos or auto_qos, not both"),
    ],
)
def test_bad_qos_sections_are_refused(tmp_path: Path, patch: str, pattern: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nscheduler: slurm\ngpu_type: A100\ngpus_per_node: 4\ncpus_per_node: 32\n" + patch)
    with pytest.raises(ConfigError, match=pattern):
        load_model(ClusterProfile, path)

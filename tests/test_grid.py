"""Grid expansion: cross product, zip groups, where filter, run identities."""

import re
from pathlib import Path

import pytest

from hpcllm.config import grid
from hpcllm.config.cluster import load_cluster
from hpcllm.config.experiment import load_experiment
from hpcllm.plan.expand import expand_experiment


def test_cross_product_and_zip():
    points = grid.expand({"a": [1, 2], "b": ["x", "y", "z"]}, [{"c": [10, 20], "d": [1, 2]}])
    assert len(points) == 2 * 3 * 2
    assert {"a": 1, "b": "x", "c": 10, "d": 1} in points
    assert all((p["c"], p["d"]) in {(10, 1), (20, 2)} for p in points)


def test_empty_grid_is_one_point():
    assert grid.expand({}, []) == [{}]


def test_set_dotted_does_not_mutate():
    doc = {"a": {"b": 1}}
    new = grid.set_dotted(doc, "a.c.d", 3)
    assert doc == {"a": {"b": 1}} and new == {"a": {"b": 1, "c": {"d": 3}}}


@pytest.mark.parametrize(
    "expr,expected",
    [
        ("x.y > 1 and z == 'a'", True),
        ("not (x.y in [1, 2])", False),
        ("x.y * 2 == 4 or False", True),
        ("1 < x.y <= 2", True),
    ],
)
def test_where(expr, expected):
    assert grid.compile_where(expr)({"x": {"y": 2}, "z": "a"}) is expected


@pytest.mark.parametrize("expr", ["open('f')", "x.__class__", "[i for i in x]", "lambda: 1"])
def test_where_rejects_code(expr):
    with pytest.raises(ValueError):
        grid.compile_where(expr)({"x": {"y": 2}})


def test_scaling_grid_applies_where(in_project):
    specs = expand_experiment(load_experiment(Path("experiments/scaling_2.7b.yaml")), load_cluster("leonardo"), "x")
    # 6 node counts x (FULL mbs2, FULL mbs4, HYBRID mbs2): HYBRID with mbs 4 is filtered out.
    assert len(specs) == 18
    assert not any(
        s.training.parallel.sharding == "HYBRID_SHARD" and s.training.train.micro_batch_size == 4 for s in specs
    )
    assert {s.training.train.global_batch_size for s in specs if s.resources.nodes == 2} == {16, 32}


def test_run_ids_are_stable_readable_and_unique(in_project):
    exp = load_experiment(Path("experiments/scaling_2.7b.yaml"))
    a = expand_experiment(exp, load_cluster("leonardo"), "x")
    b = expand_experiment(exp, load_cluster("leonardo"), "x")
    assert [s.run_id for s in a] == [s.run_id for s in b]
    assert len({s.run_id for s in a}) == len(a)
    assert a[0].run_id.startswith("2.7b-n2x4-mbs2-ga1-fs-acnone-seq4096-")
    assert all(s.training.run_id == s.run_id for s in a)
    assert all(s.training.metrics.gpu_type == "A100" for s in a)


def test_changing_a_setting_changes_the_id(in_project, tmp_path):
    text = Path("experiments/smoke.yaml").read_text()
    exp1 = load_experiment(Path("experiments/smoke.yaml"))
    (tmp_path / "s.yaml").write_text(re.sub(r"steps: \d+", "steps: 7", text))
    exp2 = load_experiment(tmp_path / "s.yaml")
    ids1 = {s.run_id for s in expand_experiment(exp1, load_cluster("local"), "a")}
    ids2 = {s.run_id for s in expand_experiment(exp2, load_cluster("local"), "b")}
    assert ids1.isdisjoint(ids2)


def test_init_from_is_made_absolute_at_submit_time_unless_it_is_a_variable(in_project, tmp_path):
    """Like data paths: a job may start elsewhere; `$VAR` paths are the compute node's to expand."""
    text = Path("experiments/smoke.yaml").read_text()
    (tmp_path / "s.yaml").write_text(text.replace("training:\n", "training:\n  init_from: results/pre@40\n", 1))
    specs = expand_experiment(load_experiment(tmp_path / "s.yaml"), load_cluster("local"), "s")
    assert {s.training.init_from for s in specs} == {str(in_project / "results" / "pre@40")}
    (tmp_path / "v.yaml").write_text(text.replace("training:\n", "training:\n  init_from: $SCRATCH/pre\n", 1))
    specs = expand_experiment(load_experiment(tmp_path / "v.yaml"), load_cluster("local"), "v")
    assert {s.training.init_from for s in specs} == {"$SCRATCH/pre"}

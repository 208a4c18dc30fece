"""What ``submit`` tells a script: its exit status (0 all went, 3 some refused, 4 none went), and the
input paths it checks before anything reaches a queue."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from hpcllm.cli import app

runner = CliRunner()


def _experiment(tmp_path: Path, name: str, nodes: list[int] | None = None, **data: str) -> Path:
    doc = yaml.safe_load(Path("experiments/smoke.yaml").read_text())
    doc["name"] = name
    if nodes is not None:
        doc["grid"] = {"resources.nodes": nodes}
        doc.pop("where", None)
    doc["training"]["data"].update(data)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _submit(exp: Path, cluster: str, tmp_path: Path, *extra: str):
    return runner.invoke(
        app,
        ["submit", str(exp), "-c", cluster, "--dry-run", "-r", str(tmp_path / "r"), "-A", "acct", *extra],
        env={"COLUMNS": "200"},
    )


@pytest.mark.parametrize(
    ("nodes", "code", "said"),
    [([1, 2], 0, None), ([1, 300], 3, "1 of 2 points refused (exit 3)"), ([300, 400], 4, "2 of 2 points refused")],
    ids=["all", "some-refused", "none"],
)
def test_exit_status_says_how_many_points_went(in_project, tmp_path, nodes, code, said):
    """Leonardo's QoS admit 1-64 nodes (normal) and 65-256 (bprod): 300 nodes are refused."""
    result = _submit(_experiment(tmp_path, "exits", nodes), "leonardo", tmp_path, "--no-memory-check")
    assert result.exit_code == code, result.output
    if said:
        assert said in result.output and "no QoS of 'leonardo' admits 300 nodes" in result.output
    planned = sorted(p.name for p in (tmp_path / "r" / "exits" / "leonardo").glob("*") if p.is_dir())
    assert len(planned) == {0: 2, 3: 1, 4: 0}[code]


def test_missing_inputs_are_refused_before_the_queue(in_project, tmp_path):
    """On `local` the login node is the compute node: a missing store or tokenizer is refused, with
    the key and the path, instead of a job that dies at start with "not a token store"."""
    store = tmp_path / "store"
    missing = _experiment(tmp_path, "nodata", [1], path=str(tmp_path / "nope"))
    result = _submit(missing, "local", tmp_path)
    assert result.exit_code == 4, result.output
    assert f"data.sources[0].path: {tmp_path / 'nope'} does not exist" in result.output
    store.mkdir()
    no_tok = _experiment(tmp_path, "notok", [1], path=str(store), tokenizer=str(tmp_path / "tok.json"))
    result = _submit(no_tok, "local", tmp_path)
    assert result.exit_code == 4 and f"data.tokenizer: {tmp_path / 'tok.json'} does not exist" in result.output
    fine = _experiment(tmp_path, "fine", [1], path=str(store))
    assert _submit(fine, "local", tmp_path).exit_code == 0


def test_unset_variables_warn_and_remote_sites_are_not_judged_from_here(in_project, tmp_path, monkeypatch):
    monkeypatch.delenv("HPCLLM_NOT_SET_HERE", raising=False)
    exp = _experiment(tmp_path, "var", [1], path="$HPCLLM_NOT_SET_HERE/store")
    result = _submit(exp, "local", tmp_path)
    assert result.exit_code == 0, result.output  # the compute node may set it: a warning, not a refusal
    assert "$HPCLLM_NOT_SET_HERE is not set on this login node" in result.output
    # Leonardo's partition is unknown to this machine's SLURM (or there is none): warned, not refused.
    far = _experiment(tmp_path, "far", [1], path=str(tmp_path / "nope"))
    result = _submit(far, "leonardo", tmp_path, "--no-memory-check")
    assert result.exit_code == 0, result.output
    assert f"data.sources[0].path: {tmp_path / 'nope'} does not exist here" in result.output


def test_doctor_experiment_checks_the_input_paths(in_project, tmp_path):
    from hpcllm.config.cluster import load_cluster
    from hpcllm.config.experiment import load_experiment
    from hpcllm.plan.expand import expand_experiment
    from hpcllm.site.checks import FAIL, OK
    from hpcllm.site.pointchecks import input_checks

    def checks(exp: Path):
        return input_checks(expand_experiment(load_experiment(exp), load_cluster("local"), str(exp)))

    exp = _experiment(tmp_path, "d1", None, path=str(tmp_path / "gone"))  # smoke's grid: 3 points
    (bad,) = checks(exp)
    assert (
        bad.status == FAIL and bad.detail == f"data.sources[0].path: {tmp_path / 'gone'} does not exist (in 3 points)"
    )
    (tmp_path / "here").mkdir()
    (good,) = checks(_experiment(tmp_path, "d2", [1], path=str(tmp_path / "here")))
    assert good.status == OK

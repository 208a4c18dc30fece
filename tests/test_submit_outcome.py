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

"""Against the local cluster's real accounting (slurmdbd + MariaDB, scripts/local-slurm.sh): `plan`
reads the account's GrpTRESMins and usage, `submit` refuses a grid over it, `doctor` reads QoS and
associations from the database, and the QoS hpcllm picks is the one the scheduler admits.

Run: ``eval "$(scripts/local-slurm.sh env)" && pytest -m slurm tests/test_slurm_accounting.py``.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from hpcllm.cli import app
from hpcllm.config.cluster import load_cluster
from hpcllm.plan.qos import default_qos
from hpcllm.site.checks import FAIL, OK
from hpcllm.site.doctor import account_checks, qos_checks
from hpcllm.site.sitefacts import qos_table, slurm_config

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
BUDGET = "hpcllm_budget"  # scripts/local-slurm.sh: GrpTRESMins=cpu=$HPCLLM_SLURM_BUDGET_CPU_MIN (600)
runner = CliRunner()


@pytest.fixture
def accounting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The scheduler's environment, and a profile of the local cluster with its QoS windows."""
    from slurm_gate import REQUIRE_ENV, slurm_env

    for key, value in slurm_env().items():
        if key == "SLURM_CONF":
            monkeypatch.setenv(key, value)
    kind = slurm_config().get("AccountingStorageType", "")
    if "slurmdbd" not in kind:
        why = (
            f"the local cluster runs without accounting ({kind}): started with HPCLLM_SLURM_ACCOUNTING=0 or "
            "before slurmdbd was part of scripts/local-slurm.sh; restart it (down, then up) when nobody uses it"
        )
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(why, pytrace=False)
        pytest.skip(why)
    doc = yaml.safe_load((REPO / "clusters" / "localslurm.yaml").read_text())
    doc.update(
        name="acct",
        qos={
            "hpcllm_small": {"max_time": "00:30:00", "max_nodes": 2},
            "hpcllm_wide": {"max_time": "00:10:00", "min_nodes": 3, "max_nodes": 4},
            "normal": {"max_time": "04:00:00", "max_nodes": 4},
        },
        auto_qos=["hpcllm_small", "hpcllm_wide"],
    )
    folder = tmp_path / "clusters"
    folder.mkdir()
    (folder / "acct.yaml").write_text(yaml.safe_dump(doc))
    for other in (REPO / "clusters").glob("*.yaml"):
        (folder / other.name).write_text(other.read_text())
    monkeypatch.setenv("HPCLLM_CLUSTERS_DIR", str(folder))
    monkeypatch.setenv("USER", "root")
    monkeypatch.delenv("HPCLLM_ACCOUNT", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def experiment(folder: Path, nodes: list[int], time: str) -> Path:
    doc: dict[str, Any] = {
        "name": "budget",
        "resources": {"time": time, "qos": "normal"},  # the QoS without a node window
        "training": {"model": {"preset": "tiny"}, "train": {"steps": 5}, "data": {"path": str(folder / "data")}},
        "grid": {"resources.nodes": nodes},
    }
    (folder / "data").mkdir(exist_ok=True)  # submit refuses a missing input on this cluster before the queue
    path = folder / "budget.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def assoc_mgr_cpu(account: str) -> tuple[float, float]:
    """The account's cpu GrpTRESMins limit and usage as slurmctld holds them: ``cpu=600(12)``."""
    out = subprocess.run(
        ["scontrol", "show", "assoc_mgr", f"accounts={account}", "flags=assoc"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = next(line for line in out.splitlines() if "GrpTRESMins=cpu=" in line and "cpu=N" not in line)
    cpu = line.split("GrpTRESMins=cpu=")[1].split(",")[0]  # 600(12)
    limit, used = cpu.rstrip(")").split("(")
    return float(limit), float(used)


def test_plan_reads_the_accounts_limit_and_usage_and_submit_refuses_a_grid_over_it(accounting: Path) -> None:
    limit, used = assoc_mgr_cpu(BUDGET)
    # Four points of 1 h each on 1-4 nodes of 2 CPUs: 1,200 CPU-minutes, priced at the time limit (CPU ranks).
    big = experiment(accounting, [1, 2, 3, 4], "01:00:00")
    out = runner.invoke(app, ["plan", str(big), "--cluster", "acct", "-A", BUDGET], env={"COLUMNS": "250"})
    assert out.exit_code == 0, out.output
    assert f"account {BUDGET} cpu: limit {limit:.0f} min, used {used:.0f}, left {limit - used:.0f}" in out.stdout
    assert "this grid: 1200 (exceeds what is left)" in out.stdout and "time limit" in out.stdout
    assert "total: 4 points, 10.00 node-hours" in out.stdout

    refused = runner.invoke(app, ["submit", str(big), "--cluster", "acct", "-A", BUDGET])
    assert refused.exit_code == 2, refused.output
    assert f"the grid needs 1200 cpu-minutes, account {BUDGET} has {limit - used:.0f} left" in refused.stderr
    assert not (accounting / "results").exists()  # nothing rendered, nothing queued
    # Told to go on, submit passes the check and queues the grid: behind a held job, cancelled with it,
    # so that nothing runs (kill_invalid_depend ends jobs whose dependency can no longer be met).
    held = subprocess.run(
        ["sbatch", "--parsable", "--hold", "-t", "1", "--wrap", "true"], capture_output=True, text=True, check=True
    ).stdout.strip()
    try:
        forced = runner.invoke(
            app, ["submit", str(big), "--cluster", "acct", "-A", BUDGET, "--over-budget", "--after", held]
        )
        assert forced.exit_code == 0, forced.output
        assert "the grid needs" not in forced.stderr and "total: 4 points" in forced.stdout
        assert len([d for d in (accounting / "results" / "budget" / "acct").iterdir() if d.is_dir()]) == 4
    finally:
        subprocess.run(["scancel", held], check=True)

    small = experiment(accounting, [1], "00:10:00")  # 20 CPU-minutes
    fits = runner.invoke(app, ["plan", str(small), "--cluster", "acct", "-A", BUDGET], env={"COLUMNS": "250"})
    assert "this grid: 20 (fits)" in fits.stdout
    unlimited = runner.invoke(app, ["plan", str(small), "--cluster", "acct"], env={"COLUMNS": "250"})
    assert "account hpcllm: no GrpTRESMins limit" in unlimited.stdout  # root's default account


def test_doctor_reads_qos_and_associations_from_the_database(accounting: Path) -> None:
    cluster = load_cluster("acct")
    config = slurm_config()
    checks = {c.name: c for c in qos_checks(cluster, None, config, "acct.yaml")}
    assert {name: c.status for name, c in checks.items()} == {"hpcllm_small": OK, "hpcllm_wide": OK, "normal": OK}
    wrong = cluster.model_copy(
        update={
            "qos": {**cluster.qos, "hpcllm_wide": cluster.qos["hpcllm_wide"].model_copy(update={"min_nodes": None})}
        }
    )
    wide = next(c for c in qos_checks(wrong, None, config, "acct.yaml") if c.name == "hpcllm_wide")
    assert wide.status == FAIL and "min_nodes unset < the site's 3 (MinTRESPerJob)" in wide.detail
    mine = account_checks(cluster, config, BUDGET, ["hpcllm_small", "hpcllm_wide"], "acct.yaml")
    assert [c.status for c in mine] == [OK] and "hpcllm_small, hpcllm_wide, normal" in mine[0].detail
    unknown = account_checks(cluster, config, "nope", ["normal"], "acct.yaml")
    assert unknown[0].status == FAIL and "theirs: hpcllm, hpcllm_budget" in unknown[0].detail


def sbatch_qos(nodes: int, qos: str) -> subprocess.CompletedProcess[str]:
    """Submit a held one-line job (nothing runs) and cancel it at once if the scheduler took it."""
    proc = subprocess.run(
        ["sbatch", "--parsable", "--hold", "-N", str(nodes), f"--qos={qos}", "-t", "5", "--wrap", "true"],
        capture_output=True,
        text=True,
        env=os.environ,
    )
    if proc.returncode == 0:
        subprocess.run(["scancel", proc.stdout.strip().split(";")[0]], check=True)
    return proc


def test_the_qos_hpcllm_picks_is_the_one_the_scheduler_admits(accounting: Path) -> None:
    cluster = load_cluster("acct")
    site = qos_table()
    assert site["hpcllm_wide"].min_nodes(cluster.cpus_per_node) == 3
    for nodes in (1, 2, 3, 4):
        chosen = default_qos(cluster, nodes, "00:05:00")
        assert chosen == ("hpcllm_small" if nodes <= 2 else "hpcllm_wide")
        assert sbatch_qos(nodes, chosen).returncode == 0, f"{nodes} nodes, {chosen}"
        other = "hpcllm_wide" if chosen == "hpcllm_small" else "hpcllm_small"
        refused = sbatch_qos(nodes, other)
        assert refused.returncode != 0 and "QOS" in refused.stderr, refused.stderr
    # A time over both windows: hpcllm picks none, and the scheduler agrees.
    assert default_qos(cluster, 1, "01:00:00") is None
    over = subprocess.run(
        ["sbatch", "--parsable", "--hold", "-N", "1", "--qos=hpcllm_small", "-t", "60", "--wrap", "true"],
        capture_output=True,
        text=True,
    )
    assert over.returncode != 0 and "QOS" in over.stderr

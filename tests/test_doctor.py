"""`hpcllm doctor` without a scheduler: reading sacctmgr/scontrol/sinfo output as Leonardo and
MareNostrum 5 print it, and the checks a site with accounting gets. The same checks against the local
cluster's real database (slurmdbd): test_slurm_accounting.py and test_slurm_site.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hpcllm.config.cluster import load_cluster
from hpcllm.launch.slurmcmd import parse_scontrol_record
from hpcllm.site import doctor
from hpcllm.site.doctor import FAIL, OK, account_checks, qos_checks
from hpcllm.site.sitefacts import (
    Association,
    gpu_count,
    parse_associations,
    parse_partition,
    parse_qos_table,
    parse_tres,
)

REPO = Path(__file__).resolve().parents[1]
ACCOUNTING = {"AccountingStorageType": "accounting_storage/slurmdbd"}

# What `sacctmgr -nP show qos format=Name,MaxWall,MaxTRESPerJob,MinTRESPerJob` prints on a site
# configured as CINECA documents Leonardo's Booster QoS.
LEONARDO_QOS = """normal|1-00:00:00|node=64|
boost_qos_dbg|00:30:00|node=2|
boost_qos_bprod|1-00:00:00|node=256|node=65
boost_qos_lprod|4-00:00:00|node=3|
"""


@pytest.mark.parametrize(
    "gres,gpus",
    [
        ("gpu:4", 4),
        ("gpu:a100:4(S:0-1)", 4),
        ("gpu:h100:2,gpu:a100:2", 4),
        ("", 0),
        ("(null)", 0),
        ("gpu:a100:4(S:0-1),nvme:1", 4),
    ],
)
def test_gpus_are_counted_from_gres(gres: str, gpus: int) -> None:
    assert gpu_count(gres) == gpus


def test_qos_table_and_associations_are_read() -> None:
    table = parse_qos_table(LEONARDO_QOS)
    assert table["boost_qos_bprod"].min_nodes(32) == 65 and table["boost_qos_bprod"].max_nodes(32) == 256
    assert table["boost_qos_dbg"].max_wall_s == 1800
    # MareNostrum 5 caps cores, not nodes: 8,000 cores are 100 nodes of 80.
    mn5 = parse_qos_table("acc_ehpc|3-00:00:00|cpu=8000|\n")["acc_ehpc"]
    assert mn5.max_nodes(80) == 100 and mn5.min_nodes(80) is None
    assert parse_tres("cpu=8000,gres/gpu=400") == {"cpu": "8000", "gres/gpu": "400"}
    assert parse_associations("aifac_l01_028||boost_qos_dbg,normal\nother|boost_usr_prod|\n") == [
        Association("aifac_l01_028", "", ["boost_qos_dbg", "normal"]),
        Association("other", "boost_usr_prod", []),
    ]


def test_a_partition_record_is_read() -> None:
    line = (
        "PartitionName=boost_usr_prod AllowGroups=ALL AllowAccounts=ALL AllowQos=normal,boost_qos_dbg "
        "DenyQos=(null) MaxNodes=UNLIMITED MaxTime=1-00:00:00 State=UP TotalCPUs=110592 TotalNodes=3456"
    )
    part = parse_partition(parse_scontrol_record(line), [])
    assert (part.total_nodes, part.max_nodes_per_job, part.max_time_s) == (3456, None, 86400)
    assert part.allow_qos == ["normal", "boost_qos_dbg"] and part.deny_qos == []


def test_qos_limits_that_match_the_site_pass_and_a_wrong_one_fails(in_project, monkeypatch: pytest.MonkeyPatch) -> None:
    leo = load_cluster("leonardo")
    monkeypatch.setattr(doctor, "qos_table", lambda: parse_qos_table(LEONARDO_QOS))
    assert {c.name: c.status for c in qos_checks(leo, None, ACCOUNTING, "leonardo.yaml")} == {
        "normal": OK,
        "boost_qos_dbg": OK,
        "boost_qos_lprod": OK,
        "boost_qos_bprod": OK,
    }
    site = parse_qos_table(
        LEONARDO_QOS.replace("normal|1-00:00:00|node=64|", "normal|1-00:00:00|node=32|").replace(
            "boost_qos_lprod", "boost_qos_lprod_new"
        )
    )
    monkeypatch.setattr(doctor, "qos_table", lambda: site)
    checks = {c.name: c for c in qos_checks(leo, None, ACCOUNTING, "leonardo.yaml")}
    assert (
        checks["normal"].status == FAIL
        and "max_nodes 64 > the site's 32 (MaxTRESPerJob node=32)" in checks["normal"].detail
    )
    assert (
        checks["boost_qos_lprod"].status == FAIL
        and "no QoS 'boost_qos_lprod' on this cluster" in checks["boost_qos_lprod"].detail
    )
    too_small = leo.model_copy(
        update={
            "qos": {**leo.qos, "boost_qos_bprod": leo.qos["boost_qos_bprod"].model_copy(update={"min_nodes": None})}
        }
    )
    monkeypatch.setattr(doctor, "qos_table", lambda: parse_qos_table(LEONARDO_QOS))
    bprod = next(c for c in qos_checks(too_small, None, ACCOUNTING, "x") if c.name == "boost_qos_bprod")
    assert bprod.status == FAIL and "min_nodes unset < the site's 65 (MinTRESPerJob)" in bprod.detail


def test_an_account_without_the_big_job_qos_is_told_so(in_project, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USER", "ab12")
    monkeypatch.setattr(
        doctor, "associations", lambda user: [Association("aifac_l01_028", "", ["normal", "boost_qos_dbg"])]
    )
    leo = load_cluster("leonardo")
    checks = account_checks(leo, ACCOUNTING, "AIFAC_L01_028", ["boost_qos_bprod", "normal"], "leonardo.yaml")
    assert [c.status for c in checks] == [OK, FAIL]
    assert "account 'AIFAC_L01_028' may not use QoS 'boost_qos_bprod', which runs need" in checks[1].detail
    unknown = account_checks(leo, ACCOUNTING, "nope", ["normal"], "leonardo.yaml")
    assert unknown[0].status == FAIL and "(theirs: aifac_l01_028)" in unknown[0].detail


def test_doctor_runs_without_torch_in_its_own_process(tmp_path: Path) -> None:
    code = (
        "import sys; from typer.testing import CliRunner; from hpcllm.cli import app; "
        "r = CliRunner().invoke(app, ['doctor', '--cluster', 'local']); "
        "print(r.exit_code, 'torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
        env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert out.stdout.split()[-1] == "False"  # the environment check imported torch in a subprocess only
    assert out.stdout.split()[-2] == "0"


def test_doctor_on_an_invalid_profile_is_one_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from hpcllm.cli import app

    bad = tmp_path / "broken.yaml"
    bad.write_text("name: broken\nscheduler: slurm\n  gpus_per_node: [4\n")
    result = CliRunner().invoke(app, ["doctor", "--cluster", str(bad)])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert str(bad) in lines[0] and "invalid YAML" in lines[0] and "Traceback" not in result.output


@pytest.mark.integration  # the SLURM client retries its connection for ~10 s
def test_doctor_with_an_unreachable_controller_fails_one_check_and_says_where_to_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A controller nobody listens for (port 1 of this host): one failed check with the client's own
    words and the fix, exit 1, and none of the checks that need the controller are attempted."""
    from typer.testing import CliRunner

    from hpcllm.cli import app

    conf = tmp_path / "slurm.conf"
    conf.write_text(
        "ClusterName=unreachable\nSlurmctldHost=localhost\nSlurmctldPort=1\nAuthType=auth/none\n"
        "NodeName=n1 CPUs=1 State=UNKNOWN\nPartitionName=debug Nodes=n1 Default=YES State=UP\n"
    )
    monkeypatch.setenv("SLURM_CONF", str(conf))
    result = CliRunner().invoke(app, ["doctor", "--cluster", str(REPO / "clusters" / "localslurm.yaml")])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.output.count(" fail ") == 1 and result.output.strip().endswith("1 fail"), result.output
    assert "login node" in result.output

"""NCCL's InfiniBand devices: the profiles pin the IB ports ``ibv_devinfo`` lists (never a RoCE port
beside them), and ``doctor --gpu`` reads back which HCAs NCCL used from its INIT/NET lines."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from hpcllm.config.cluster import load_cluster
from hpcllm.site.checks import OK, SKIP, WARN
from hpcllm.site.jobchecks import nccl_network_check
from hpcllm.site.nccllog import parse_nccl_network

# ibv_devinfo of a node with four IB ports and one Ethernet (RoCE) port (trimmed to what matters).
IBV_DEVINFO = "".join(
    f"hca_id:\tmlx5_{i}\n\ttransport:\t\t\tInfiniBand (0)\n\tphys_port_cnt:\t\t\t1\n"
    f"\t\tport:\t1\n\t\t\tstate:\t\t\tPORT_ACTIVE (4)\n\t\t\tlink_layer:\t\t{link}\n\n"
    for i, link in enumerate(["InfiniBand", "InfiniBand", "Ethernet", "InfiniBand", "InfiniBand"])
)

USING = "[0]mlx5_0:1/IB [1]mlx5_1:1/IB [2]mlx5_3:1/IB [3]mlx5_4:1/IB"
NCCL_LOG = f"""\
[hpcllm] job 42 restart 0 on lrdn[0001-0002]
lrdn0001:77:77 [0] NCCL INFO Bootstrap : Using ib0:10.1.0.1<0>
lrdn0001:77:77 [0] NCCL INFO NET/IB : Using {USING} ; OOB ib0:10.1.0.1<0>
lrdn0001:77:77 [0] NCCL INFO Using network IB
lrdn0002:91:91 [1] NCCL INFO NET/IB : Using {USING} ; OOB ib0:10.1.0.2<0>
lrdn0002:91:91 [1] NCCL INFO Using network IB
"""


def test_the_parser_reads_the_hcas_nccl_used():
    net = parse_nccl_network(NCCL_LOG)
    assert net.networks == ["IB"] and net.oob == ["ib0"]
    assert net.hcas == ["mlx5_0:1/IB", "mlx5_1:1/IB", "mlx5_3:1/IB", "mlx5_4:1/IB"]
    check = nccl_network_check(NCCL_LOG)
    assert check.status == OK and check.detail.startswith("network IB; HCAs mlx5_0:1/IB, mlx5_1:1/IB")


def test_a_socket_fallback_is_a_warning_and_no_nccl_lines_a_skip():
    log = (
        "n1:5:5 [0] NCCL INFO NET/IB : No device found.\n"
        "n1:5:5 [0] NCCL INFO NET/Socket : Using [0]eth0:192.168.1.2<0> [1]ib0:10.0.0.2<0>\n"
        "n1:5:5 [0] NCCL INFO Using network Socket\n"
    )
    net = parse_nccl_network(log)
    assert net.networks == ["Socket"] and net.sockets == ["eth0", "ib0"] and net.hcas == []
    assert nccl_network_check(log).status == WARN
    assert nccl_network_check("[hpcllm] gloo only\n").status == SKIP


def _ib_line(cluster: str) -> str:
    (line,) = [line for line in load_cluster(cluster).setup if "ibv_devinfo" in line]
    return line


@pytest.mark.parametrize("cluster", ["leonardo", "marenostrum5"])
def test_the_profiles_pin_the_infiniband_ports_only(cluster, tmp_path: Path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ibv_devinfo").write_text(f"#!/bin/sh\ncat <<'EOF'\n{IBV_DEVINFO}EOF\n")
    (bin_dir / "ibv_devinfo").chmod(0o755)

    def hca(path: str, preset: str | None = None) -> str:
        env = {"PATH": path, **({"NCCL_IB_HCA": preset} if preset else {})}
        script = f'{_ib_line(cluster)}\necho "HCA=${{NCCL_IB_HCA:-unset}}"'
        proc = subprocess.run(["/bin/bash", "-c", script], env=env, capture_output=True, text=True, check=True)
        return proc.stdout.strip()

    with_devinfo = f"{bin_dir}{os.pathsep}/usr/bin:/bin"
    assert hca(with_devinfo) == "HCA==mlx5_0,mlx5_1,mlx5_3,mlx5_4"  # the Ethernet port mlx5_2 left out
    assert hca(with_devinfo, "mlx5_9") == "HCA=mlx5_9"  # the user's own value wins
    assert hca(str(tmp_path / "nothing")) == "HCA=unset"  # no ibv_devinfo: left to NCCL's default

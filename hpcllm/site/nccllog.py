"""What NCCL says it used, read from its INFO lines (``NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=INIT,NET``).

``doctor --gpu`` prints the InfiniBand devices (HCAs) and ports NCCL opened, so a profile's
``NCCL_IB_HCA`` is checked against what the job really did: a RoCE port or a missing adapter shows
here, not as a slow all-reduce weeks later. The lines look like (NCCL 2.18-2.23)::

    node1:123:123 [0] NCCL INFO NET/IB : Using [0]mlx5_0:1/IB [1]mlx5_1:1/IB ; OOB ib0:10.0.0.1<0>
    node1:123:123 [0] NCCL INFO Using network IB
    node1:123:123 [0] NCCL INFO NET/Socket : Using [0]ib0:10.0.0.1<0>
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_IB_USING = re.compile(r"NCCL INFO NET/IB\s*:\s*Using\s+(?P<devices>.*?)(?:\s*;\s*OOB\s+(?P<oob>\S+))?\s*$")
_DEVICE = re.compile(r"\[\d+\](?P<name>[\w.-]+):(?P<port>\d+)/(?P<link>\w+)")
_NETWORK = re.compile(r"NCCL INFO Using network (?P<net>\S+)")
_SOCKET_USING = re.compile(r"NCCL INFO NET/Socket\s*:\s*Using\s+(?P<ifaces>.*?)\s*$")
_IFACE = re.compile(r"\[\d+\](?P<name>[\w.-]+):")


@dataclass
class NcclNetwork:
    """The transport and devices of every rank that logged them (deduplicated, in first-seen order)."""

    networks: list[str] = field(default_factory=list)  # "IB", "Socket"
    hcas: list[str] = field(default_factory=list)  # "mlx5_0:1/IB" (device:port/link layer)
    oob: list[str] = field(default_factory=list)  # the out-of-band (bootstrap) interfaces
    sockets: list[str] = field(default_factory=list)  # interfaces of the socket transport

    @property
    def found(self) -> bool:
        return bool(self.networks or self.hcas or self.sockets)

    def describe(self) -> str:
        parts = [f"network {', '.join(self.networks) or '?'}"]
        if self.hcas:
            parts.append(f"HCAs {', '.join(self.hcas)}")
        if self.oob:
            parts.append(f"bootstrap {', '.join(self.oob)}")
        if self.sockets:
            parts.append(f"socket interfaces {', '.join(self.sockets)}")
        return "; ".join(parts)


def _add(items: list[str], value: str) -> None:
    if value not in items:
        items.append(value)


def parse_nccl_network(log: str) -> NcclNetwork:
    """The network NCCL chose and the devices it used, from a job log with NCCL's INIT/NET lines."""
    out = NcclNetwork()
    for line in log.splitlines():
        if "NCCL INFO" not in line:
            continue
        if m := _IB_USING.search(line):
            for d in _DEVICE.finditer(m.group("devices")):
                _add(out.hcas, f"{d.group('name')}:{d.group('port')}/{d.group('link')}")
            if m.group("oob"):
                _add(out.oob, m.group("oob").split(":")[0])
        elif m := _NETWORK.search(line):
            _add(out.networks, m.group("net"))
        elif m := _SOCKET_USING.search(line):
            for i in _IFACE.finditer(m.group("ifaces")):
                _add(out.sockets, i.group("name"))
    return out

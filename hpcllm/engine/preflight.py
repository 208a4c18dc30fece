"""Pre-flight: measure every node of the allocation before training, so a slow one is left out.

``python -m hpcllm.engine.preflight --run-dir RUN_DIR`` under torchrun on all of the job's nodes
(the batch script runs it before the engine when the run asks for it). A slow node drags every
step of a synchronous job, and the job cannot tell from its step times which node it is (all ranks
wait for the slowest), so each node is measured alone, and then the links between them:

1. GEMM throughput per rank (bf16 on a GPU, fp32 on CPU) and memory bandwidth (a large copy);
2. all-reduce bus bandwidth inside each node (its ranks only; none with one rank per node);
3. all-reduce bus bandwidth across all ranks;
4. a pairwise pass between the nodes' first ranks (round-robin rounds of disjoint pairs, a
   ping-pong each) that finds a slow link.

Rank 0 writes ``preflight.json`` (docs/run-contract.md, "Pre-flight"): per node its figures and
their ratio to the median node, the nodes below ``--min-fraction`` of the median in any figure
(``slow_nodes``, with why), the slow links, and the time it took. Which nodes then train is
decided torch-free by hpcllm.launch.preflight. On CPU the same code runs with gloo.

Fault injection: ``HPCLLM_FAULT_SLOW_NODE=<node>[:<factor>]`` (or ``#<i>``: the i-th node of the
pre-flight's order, ``node_order`` in preflight.json) makes that node's GEMM and copy probes do
``factor`` (default 8) times the work per timed iteration: really slower, as a node with a
throttled GPU. Read only here; off unless set.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from hpcllm.engine.distributed import init_distributed, shutdown_distributed
from hpcllm.engine.nodeprobe import gemm_tflops, memory_gbs, node_name, timed
from hpcllm.errors import ConfigError
from hpcllm.fsutil import write_json_in
from hpcllm.rundir import RunDir

FAULT_SLOW_ENV = "HPCLLM_FAULT_SLOW_NODE"
DEFAULT_MIN_FRACTION = 0.7


def slow_factor(node: str, order: list[str]) -> int:
    """How many times the work this node's compute probes do per iteration (1 = no fault).
    ``HPCLLM_FAULT_SLOW_NODE`` names the node, or ``#<i>`` the i-th (0-based) of ``order``."""
    raw = os.environ.get(FAULT_SLOW_ENV, "").strip()
    if not raw:
        return 1
    name, _, factor = raw.partition(":")
    try:
        value = int(factor or 8)
        if name.startswith("#"):
            name = order[int(name[1:])]
    except (ValueError, IndexError):
        raise ConfigError(
            f"environment {FAULT_SLOW_ENV}={raw!r}: expected <node>[:<factor>] or #<index>[:<factor>], e.g. n3:8"
        ) from None
    return value if name == node else 1


def allreduce_busbw_gbs(device: torch.device, group: Any, size: int) -> float:
    """All-reduce bus bandwidth (nccl-tests' convention: 2(n-1)/n x bytes / time), GB/s."""
    numel = (1 << 26) if device.type == "cuda" else (1 << 20)
    t = torch.ones(numel, device=device)
    seconds = timed(lambda: dist.all_reduce(t, group=group), device, iters=5)
    return 2 * (size - 1) / size * t.numel() * t.element_size() / seconds / 1e9


def round_robin(items: list[int]) -> list[list[tuple[int, int]]]:
    """Rounds of disjoint pairs covering every pair once (the circle method)."""
    ring = list(items) + ([-1] if len(items) % 2 else [])
    rounds = []
    for _ in range(len(ring) - 1):
        half = len(ring) // 2
        pairs = [(ring[i], ring[-1 - i]) for i in range(half)]
        rounds.append([tuple(sorted(p)) for p in pairs if -1 not in p])
        ring = [ring[0], ring[-1], *ring[1:-1]]
    return rounds  # type: ignore[return-value]


def link_gbs(device: torch.device, rank: int, peer: int) -> float | None:
    """Ping-pong between ``rank`` and ``peer``; the lower rank times it and returns GB/s."""
    numel = (1 << 26) if device.type == "cuda" else (1 << 20)
    t = torch.ones(numel, device=device)

    def ping() -> None:
        if rank < peer:
            dist.send(t, peer)
            dist.recv(t, peer)
        else:
            dist.recv(t, peer)
            dist.send(t, peer)

    seconds = timed(ping, device, iters=3)
    return 2 * t.numel() * t.element_size() / seconds / 1e9 if rank < peer else None


def measure(min_fraction: float) -> dict[str, Any] | None:
    """Run every probe on every rank; rank 0 returns the whole picture (others None)."""
    env = init_distributed("auto")
    device, rank, world = env.device, env.rank, env.world_size
    node = node_name()
    started = time.perf_counter()
    placement: list[Any] = [None] * world
    dist.all_gather_object(placement, (rank, node, env.local_rank))
    nodes = sorted({n for _, n, _ in placement}, key=lambda n: min(r for r, m, _ in placement if m == n))
    factor = slow_factor(node, nodes)
    facts: dict[str, Any] = {"rank": rank, "node": node}
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    facts["gemm_tflops"] = gemm_tflops(device, factor=factor)
    facts["memory_gbs"] = memory_gbs(device, factor=factor)
    timings["compute_s"] = time.perf_counter() - t0

    dist.barrier()  # each collective probe starts together: the compute probes' skew is not its time
    t0 = time.perf_counter()
    intra = None
    for n in nodes:  # every rank creates every group, as new_group requires
        ranks = [r for r, m, _ in placement if m == n]
        group = dist.new_group(ranks)
        if n == node and len(ranks) > 1:
            intra = allreduce_busbw_gbs(device, group, len(ranks))
    facts["intra_busbw_gbs"] = intra
    timings["intra_s"] = time.perf_counter() - t0

    dist.barrier()
    t0 = time.perf_counter()
    inter = allreduce_busbw_gbs(device, None, world) if world > 1 else None
    timings["inter_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    leaders = [min(r for r, m, _ in placement if m == n) for n in nodes]
    links: list[dict[str, Any]] = []
    for pairs in round_robin(leaders):
        for a, b in pairs:
            if rank in (a, b):
                gbs = link_gbs(device, rank, b if rank == a else a)
                if gbs is not None:
                    links.append({"a": node, "b": placement[b][1], "gbs": gbs})
        dist.barrier()
    timings["pairwise_s"] = time.perf_counter() - t0
    facts["links"] = links
    facts["timings"] = timings

    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, facts)
    elapsed = time.perf_counter() - started
    shutdown_distributed()
    if rank != 0:
        return None
    return summarise(gathered, nodes, inter, min_fraction, elapsed, device.type)


def summarise(
    facts: list[dict[str, Any]], nodes: list[str], inter: float | None, min_fraction: float, elapsed: float, device: str
) -> dict[str, Any]:
    """Per node the slowest rank's figures and their ratio to the median node; the slow nodes and links."""
    per_node: dict[str, dict[str, Any]] = {}
    for n in nodes:
        mine = [f for f in facts if f["node"] == n]
        per_node[n] = {
            "ranks": [f["rank"] for f in mine],
            "gemm_tflops": min(f["gemm_tflops"] for f in mine),
            "memory_gbs": min(f["memory_gbs"] for f in mine),
            "intra_busbw_gbs": mine[0]["intra_busbw_gbs"],
        }
    slow: dict[str, str] = {}
    for key in ("gemm_tflops", "memory_gbs", "intra_busbw_gbs"):
        values = {n: v[key] for n, v in per_node.items() if v[key] is not None}
        if len(values) < 2:
            continue
        median = statistics.median(values.values())
        for n, value in values.items():
            ratio = value / median if median else 1.0
            per_node[n][f"{key}_ratio"] = ratio
            if ratio < min_fraction:
                slow[n] = "; ".join(filter(None, [slow.get(n), f"{key} {value:.3g} = {ratio:.2f} x the median"]))
    links = [link for f in facts for link in f["links"]]
    slow_links = []
    if len(links) >= 2:
        median = statistics.median(link["gbs"] for link in links)
        slow_links = [link for link in links if link["gbs"] < min_fraction * median]
        for n in nodes:  # a node whose every link is slow is the slow one, not its peers
            mine = [link for link in links if n in (link["a"], link["b"])]
            if len(mine) >= 2 and all(link in slow_links for link in mine):
                slow[n] = "; ".join(filter(None, [slow.get(n), "every link to it below the median's fraction"]))
    score = {n: min((v for k, v in per_node[n].items() if k.endswith("_ratio")), default=1.0) for n in nodes}
    return {
        "time": time.time(),
        "device": device,
        "min_fraction": min_fraction,
        "nodes": per_node,
        "node_order": nodes,
        "score": score,
        "inter_busbw_gbs": inter,
        "links": links,
        "slow_links": slow_links,
        "slow_nodes": slow,
        "elapsed_s": elapsed,
        "elapsed_s_per_node": elapsed / len(nodes),
        "timings_rank0": facts[0]["timings"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hpcllm.engine.preflight", description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--min-fraction", type=float, default=DEFAULT_MIN_FRACTION)
    args = parser.parse_args(argv)
    try:
        result = measure(args.min_fraction)
    except ConfigError as exc:
        print(f"[hpcllm] pre-flight: {exc}", file=sys.stderr)
        return 2
    if result is not None:
        write_json_in(args.run_dir, RunDir(args.run_dir).preflight, result)
        named = "; ".join(f"{n}: {why}" for n, why in result["slow_nodes"].items()) or "none"
        print(
            f"[hpcllm] pre-flight of {len(result['nodes'])} node(s) in {result['elapsed_s']:.1f} s; "
            f"slow nodes: {named}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The engine's probe mode: recovery after out-of-memory and over-budget steps, resume, the report.

In-process (a world of one, the tiny model): out-of-memory errors are raised from hooks where a real
one would strike (in forward, in backward), the budget is crossed by feeding the guard readings; the
probe must record the size as too large, rebuild, and run the next size. The real-memory runs, on
one and on two ranks, are in tests/test_explore_local.py and test_probe_engine's integration test.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from engine_support import make_store, run_engine, write_run

from hpcllm.config.loader import load_model
from hpcllm.config.probe import ProbeReport, ProbeTrial
from hpcllm.config.training import TrainingConfig
from hpcllm.engine.distributed import DistEnv
from hpcllm.engine.memory_meter import GIB
from hpcllm.engine.probe import Prober, load_report, new_report
from hpcllm.engine.train import summary_fields
from hpcllm.rundir import RunDir

ENV = DistEnv(rank=0, world_size=1, local_rank=0, local_world_size=1, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_store(tmp_path_factory.mktemp("data") / "store")


@pytest.fixture
def world_of_one() -> Iterator[None]:
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def config(tmp_path: Path, store: Path, **probe: object) -> TrainingConfig:
    settings = {"start_mbs": 2, "max_mbs": 8, "steps": 1, "warmup_steps": 0, "min_gain": None, **probe}
    path = write_run(tmp_path / "run", store, probe=settings)
    return load_model(TrainingConfig, path)


class OutOfMemoryOnce:
    """A forward hook that raises a CUDA-style out-of-memory error the first time, in forward or backward."""

    def __init__(self, in_backward: bool) -> None:
        self.in_backward, self.fired = in_backward, False

    def __call__(self, module: torch.nn.Module, args: object, output: torch.Tensor) -> None:
        if self.fired:
            return
        self.fired = True
        if not self.in_backward:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

        def fail(grad: torch.Tensor) -> None:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")

        output.register_hook(fail)


@pytest.mark.parametrize("in_backward", [False, True], ids=["forward", "backward"])
def test_out_of_memory_is_recorded_and_the_next_size_runs(
    world_of_one: None, tmp_path: Path, store: Path, in_backward: bool
) -> None:
    prober = Prober(config(tmp_path, store), ENV)
    first_model = prober.model
    prober.model.blocks[1].register_forward_hook(OutOfMemoryOnce(in_backward))
    failed = prober.trial(4)
    assert failed.status == "oom" and "CUDA out of memory" in (failed.error or "")
    assert failed.samples_per_s_per_gpu is None
    assert prober.model is not first_model  # rebuilt: nothing of the failed step is reused
    assert all(p.grad is None for p in prober.model.parameters())
    ok = prober.trial(2)
    assert ok.fits and ok.steps == 1 and ok.samples_per_s_per_gpu > 0 and ok.estimate_gib > 0


@pytest.mark.parametrize("trip_at,where", [(1, "forward"), (3, "backward")])
def test_budget_guard_stops_the_step_on_every_block_boundary(
    world_of_one: None, tmp_path: Path, store: Path, trip_at: int, where: str
) -> None:
    """The tiny model has 2 blocks: readings 1-2 are taken in forward, 3-4 in backward."""
    prober = Prober(config(tmp_path, store, memory_budget_gib=1000.0), ENV)
    readings = {"n": 0}
    real = prober.meter.current_bytes

    def reading() -> int:
        readings["n"] += 1
        return 2000 * GIB if readings["n"] == trip_at else real()

    prober.meter.current_bytes = reading  # type: ignore[method-assign]
    over = prober.trial(4)
    assert over.status == "over_budget"
    assert f"({where}) > budget 1000.00 GiB" in (over.error or "")
    assert prober.trial(2).fits


def test_a_step_over_the_budget_by_its_peak_is_too_large(world_of_one: None, tmp_path: Path, store: Path) -> None:
    prober = Prober(config(tmp_path, store, memory_budget_gib=1000.0), ENV)
    prober.meter.peak_bytes = lambda: 1001 * GIB  # type: ignore[method-assign]
    trial = prober.trial(2)
    assert trial.status == "over_budget" and trial.error == "peak 1001.00 GiB > budget 1000.00 GiB"
    assert trial.samples_per_s_per_gpu is not None  # the step ran: measured, but too large


def test_cpu_peak_is_reset_per_trial(world_of_one: None, tmp_path: Path, store: Path) -> None:
    prober = Prober(config(tmp_path, store), ENV)
    if not prober.meter.resettable:
        pytest.skip("this kernel does not let a process reset its resident high-water mark")
    big = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    peak_with_big = prober.meter.peak_bytes()
    del big
    prober.meter.release()
    prober.meter.reset_peak()
    assert prober.meter.peak_bytes() < peak_with_big - 32 * 2**20


def test_resume_counts_the_size_that_was_running_as_too_large(tmp_path: Path, store: Path) -> None:
    cfg = config(tmp_path, store)
    run_dir = RunDir(tmp_path / "run")
    old = new_report(cfg, ENV)
    old.trials = [ProbeTrial(mbs=2, status="ok", samples_per_s_per_gpu=1.0)]
    old.trying = 4
    run_dir.probe.write_text(old.model_dump_json())
    report = load_report(cfg, run_dir, ENV, resume=True)
    assert [(t.mbs, t.status) for t in report.trials] == [(2, "ok"), (4, "crashed")]
    assert report.trying is None
    assert load_report(cfg, run_dir, ENV, resume=False).trials == []
    other_world = DistEnv(rank=0, world_size=2, local_rank=0, local_world_size=2, device=torch.device("cpu"))
    assert load_report(cfg, run_dir, other_world, resume=True).trials == []


@pytest.mark.integration
def test_two_ranks_leave_an_over_budget_step_together_and_go_on(tmp_path: Path, store: Path) -> None:
    """Real memory on 2 FSDP2 ranks: 16 blocks of the tiny model at seq 256 keep ~25 MB per sequence,
    so MBS 16 crosses a 0.6 GiB budget in the middle of forward or backward; every rank stops
    there, the model is rebuilt, and smaller sizes are measured."""
    path = write_run(
        tmp_path / "run",
        store,
        model={"preset": "tiny", "seq_len": 256, "n_layers": 16},
        probe={
            "start_mbs": 16,
            "max_mbs": 16,
            "steps": 1,
            "warmup_steps": 0,
            "min_gain": None,
            "memory_budget_gib": 0.6,
        },
    )
    proc = run_engine(path, 2, timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = ProbeReport.model_validate_json((tmp_path / "run" / "probe.json").read_text())
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["kind"] == "probe"
    assert report.status == "completed" and report.world_size == 2
    guarded = [
        t for t in report.trials if t.status == "over_budget" and "in use on the fullest rank" in (t.error or "")
    ]
    assert guarded, report.trials  # at least one step was stopped by the guard, not only judged by its peak
    first_stop = report.trials.index(guarded[0])
    assert any(t.fits for t in report.trials[first_stop + 1 :])  # ... and the probe went on
    fitted = [t.mbs for t in report.trials if t.fits]
    assert report.largest_fit == max(fitted)
    assert all(t.mbs > report.largest_fit for t in report.trials if not t.fits)
    assert all(t.memory_gib <= 0.6 for t in report.trials if t.fits)


def test_probe_json_describes_the_setup_as_summary_json_does(tmp_path: Path, store: Path) -> None:
    cfg = config(tmp_path, store)
    report = new_report(cfg, ENV).model_dump()
    summary = summary_fields(cfg, ENV, gbs=cfg.train.micro_batch_size)
    shared = report.keys() & summary.keys()
    setup = {"run_id", "model", "n_params", "seq_len", "world_size", "sharding", "precision", "compile"}
    assert setup | {"activation_checkpointing", "ac_every", "grad_accum", "device", "gpu_type"} <= shared
    assert {k: report[k] for k in shared} == {k: summary[k] for k in shared}
    assert report["gpu_type"] == "cpu" and report["cpu_offload"] is cfg.parallel.cpu_offload

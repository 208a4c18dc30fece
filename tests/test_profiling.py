"""Profiling: Chrome traces of the asked steps in the run directory, and `hpcllm status` saying where."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from engine_support import make_store, write_run
from typer.testing import CliRunner

from hpcllm.cli import app
from hpcllm.engine.entry import run
from hpcllm.rundir import EXIT_PREEMPTED, RunDir


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_store(tmp_path_factory.mktemp("data") / "store")


def step_ranges(trace: Path) -> list[dict[str, Any]]:
    """The trace's ``hpcllm.step N`` ranges (a trace viewer's user annotations)."""
    events = json.loads(trace.read_text())["traceEvents"]
    return [e for e in events if e.get("cat") == "user_annotation" and e["name"].startswith("hpcllm.step ")]


def test_trace_covers_the_asked_steps(tmp_path: Path, store: Path) -> None:
    d = tmp_path / "r"
    assert run(write_run(d, store, train={"steps": 5}, profile={"start_step": 2, "steps": 3, "memory": True})) == 0
    assert [p.name for p in RunDir(d).profile_files()] == ["trace-rank0-steps2-4.json"]  # no CUDA snapshot on CPU
    trace = RunDir(d).profile_trace(0, 2, 4)
    events = json.loads(trace.read_text())["traceEvents"]
    ranges = sorted(step_ranges(trace), key=lambda e: e["ts"])
    assert [e["name"] for e in ranges] == ["hpcllm.step 2", "hpcllm.step 3", "hpcllm.step 4"]
    # Real work was recorded inside the steps: the model's matmuls, and (memory: true) allocations.
    first = ranges[0]
    inside = [e for e in events if e.get("cat") == "cpu_op" and first["ts"] <= e["ts"] <= first["ts"] + first["dur"]]
    assert any(e["name"] in ("aten::mm", "aten::addmm", "aten::linear") for e in inside)
    assert any(e["name"] == "[memory]" for e in events)


def test_a_resumed_run_does_not_profile_again_and_a_stopped_one_keeps_its_part(tmp_path: Path, store: Path) -> None:
    d = tmp_path / "r"
    cfg = write_run(d, store, train={"steps": 4}, profile={"start_step": 1, "steps": 3})
    RunDir(d).stop_file.touch()  # stop after step 1, inside the profiled range
    assert run(cfg) == EXIT_PREEMPTED
    assert [e["name"] for e in step_ranges(RunDir(d).profile_trace(0, 1, 1))] == ["hpcllm.step 1"]
    RunDir(d).stop_file.unlink()
    assert run(cfg) == 0  # resumes at step 1: start_step is behind it
    assert [p.name for p in RunDir(d).profile_files()] == ["trace-rank0-steps1-1.json"]


def test_status_says_where_the_traces_are(tmp_path: Path, store: Path) -> None:
    d = tmp_path / "results" / "exp" / "local" / "r"
    assert run(write_run(d, store, train={"steps": 2}, profile={"start_step": 1, "steps": 1})) == 0
    result = CliRunner().invoke(app, ["status", "-r", str(tmp_path / "results")], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert f"{RunDir(d).profile}" in result.output.replace("\n", "")
    assert "trace-rank0-steps1-1.json" in result.output

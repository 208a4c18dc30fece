"""StopRequest in one process: signals and the STOP file set the flag; nothing else does."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from hpcllm.engine.preemption import StopRequest
from hpcllm.rundir import RunDir


@pytest.fixture
def stop(tmp_path: Path):
    req = StopRequest(RunDir(tmp_path))
    req.install()
    yield req
    req.uninstall()


def test_no_request_no_stop(stop: StopRequest) -> None:
    assert not stop.should_stop()
    assert stop.reason is None


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM], ids=["SIGUSR1", "SIGTERM"])
def test_signal_sets_flag_without_killing(stop: StopRequest, sig: signal.Signals) -> None:
    os.kill(os.getpid(), sig)  # the default action of both would end this process
    assert stop.should_stop()
    assert stop.reason == sig.name


def test_stop_file(stop: StopRequest) -> None:
    stop.run_dir.stop_file.touch()
    assert stop.should_stop()
    assert "STOP file" in stop.reason
    assert stop.run_dir.stop_file.exists(), "the engine must not delete STOP (the batch script does)"


def test_uninstall_restores_previous_handlers(tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGUSR1)
    req = StopRequest(RunDir(tmp_path))
    req.install()
    assert signal.getsignal(signal.SIGUSR1) != before
    req.uninstall()
    assert signal.getsignal(signal.SIGUSR1) == before

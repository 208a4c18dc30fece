"""Shared fixtures: the project root, and a working directory with the shipped profiles."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import Phase, settings

# Tests marked `slurm` fail under `make test` and skip (counted in the final line) by hand when
# the local SLURM cluster does not answer: see tests/slurm_gate.py.
from slurm_gate import pytest_report_teststatus, pytest_runtest_setup, pytest_terminal_summary  # noqa: F401

# The scheduler tests' fixtures (demo_data, env), shared by the test_slurm_*.py modules.
pytest_plugins = ["slurm_fixtures"]

# Property tests (tests/test_boundary_properties.py): a bounded count of examples and a fixed
# derivation of them, so the suite is fast and every run tries the same inputs. HYPOTHESIS_PROFILE=deep
# tries more (by hand, when changing a boundary).
# No explain phase in CI: on a failing run-folder property it re-ran the command for minutes (275 s
# seen) to say which lines only failing examples reach; the shrunk example is what one needs.
CI_PHASES = [Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink]
settings.register_profile(
    "ci", max_examples=50, derandomize=True, deadline=None, database=None, print_blob=True, phases=CI_PHASES
)
settings.register_profile("deep", max_examples=500, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def project_root() -> Path:
    return ROOT


@pytest.fixture
def in_project(monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run the test from the project root, where clusters/ and experiments/ live."""
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("HPCLLM_ACCOUNT", raising=False)
    monkeypatch.delenv("HPCLLM_CLUSTERS_DIR", raising=False)
    return ROOT


@pytest.fixture(scope="session")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two demo stores of real text: plain, and instruction data with a loss mask."""
    from hpcllm.data.demo import write_demo

    root = tmp_path_factory.mktemp("stores")
    write_demo(root / "plain", with_debian_docs=False)
    write_demo(root / "inst", instruct=True, with_debian_docs=False)
    return {"plain": root / "plain", "inst": root / "inst"}


def pytest_configure(config: pytest.Config) -> None:
    # Tests start torchrun and engines: keep each process single-threaded on this 2-core machine.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

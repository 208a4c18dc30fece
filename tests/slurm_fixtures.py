"""Fixtures of the scheduler tests (test_slurm_*.py): the demo data and the jobs' environment.

A plugin (tests/conftest.py lists it in ``pytest_plugins``), so that no test module imports a
fixture from another: the helpers they share stay plain functions in test_slurm_cluster.py.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from slurm_gate import LOCAL_SLURM_CONF

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hpcllm.data.demo import write_demo

    out = tmp_path_factory.mktemp("slurm-data") / "demo"
    write_demo(out, overwrite=True, with_debian_docs=False)
    return out


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, demo_data: Path, tmp_path: Path) -> Path:
    """Jobs inherit this environment (sbatch --export=ALL): this interpreter, this checkout."""
    if "SLURM_CONF" not in os.environ and LOCAL_SLURM_CONF.exists():
        monkeypatch.setenv("SLURM_CONF", str(LOCAL_SLURM_CONF))
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("HPCLLM_CLUSTERS_DIR", str(REPO / "clusters"))
    monkeypatch.chdir(tmp_path)
    return tmp_path / "results"

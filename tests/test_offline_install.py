"""The offline install of a site without internet: ``hpcllm env pack`` builds a wheelhouse here, a
fresh virtualenv installs from it with the index switched off, and ``hpcllm submit --dry-run`` runs
from that environment. Login-node dependencies only (no ``--train``: no torch).

Needs PyPI (or pip's cache) to build the wheelhouse; the install itself reads nothing but the
folder. The install time is printed (``-s``), never asserted.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.mark.integration
@pytest.mark.slow
def test_a_wheelhouse_installs_with_no_index_and_submits(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HPCLLM_", "PIP_")) and k != "PYTHONPATH"}
    env["COLUMNS"] = "200"
    house = tmp_path / "wheelhouse"
    cli = [sys.executable, "-c", "from hpcllm.cli import main; main()"]
    packed = _run([*cli, "env", "pack", "-o", str(house)], tmp_path, env)
    line = f"python -m pip install --no-index --find-links {house} -r {house / 'requirements.txt'}"
    assert line in packed.stdout
    pinned = (house / "requirements.txt").read_text().split()
    assert "hpcllm==0.1.0" in pinned and any(p.startswith("plotly==") for p in pinned)
    assert not any(p.startswith("torch==") for p in pinned)  # the login node's set

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], tmp_path, env)
    py = str(venv / "bin" / "python")
    offline = {**env, "PIP_NO_INDEX": "1", "PIP_CONFIG_FILE": os.devnull}  # no index, whatever pip.conf says
    started = time.monotonic()
    _run([py, *line.split()[1:]], tmp_path, offline)
    print(f"\noffline install of {len(pinned)} wheels: {time.monotonic() - started:.1f} s")

    hpcllm = str(venv / "bin" / "hpcllm")
    result = _run(
        [
            hpcllm,
            "submit",
            "experiments/scaling_2.7b.yaml",
            "-c",
            "leonardo",
            "--dry-run",
            "-A",
            "acct",
            "-r",
            str(tmp_path / "results"),
            "--no-memory-check",
        ],
        ROOT,
        env,
    )
    assert "rendered" in result.stdout
    assert len(list((tmp_path / "results" / "scaling_2.7b" / "leonardo").glob("*/job.sbatch"))) == 18
    _run([py, "-c", "import importlib.util as u; assert u.find_spec('torch') is None"], tmp_path, env)

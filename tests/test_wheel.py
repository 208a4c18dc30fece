"""A wheel built from the repository installs into a fresh virtualenv and works from any folder:
it finds the cluster profiles and the batch template it ships (``<prefix>/share/hpcllm``) and the
data files inside the package (the seed's rows, the report template).

No network: the wheel is built with the test environment's setuptools (no build isolation) and
installed with ``--no-deps``; the fresh environment then sees the test environment's packages
through a ``.pth`` file (added after the install, so pip never sees the editable hpcllm there).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ("pyproject.toml", "README.md", "hpcllm", "templates", "clusters")


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


@pytest.mark.integration
def test_wheel_installs_into_a_fresh_venv_and_finds_its_files(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPCLLM_") and k != "PYTHONPATH"}
    env["COLUMNS"] = "250"
    # Build from a copy, so that setuptools' build/ and egg-info never land in the checkout.
    src = tmp_path / "src"
    src.mkdir()
    for name in SHIPPED:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, src / name)
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(src),
        ],
        tmp_path,
        env,
    )
    (wheel,) = (tmp_path / "dist").glob("hpcllm-*.whl")

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path, env)
    python = venv / "bin" / "python"
    _run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)],
        tmp_path,
        env,
    )
    site = Path(
        _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path, env).strip()
    )
    (site / "test-env-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    work = tmp_path / "elsewhere"  # no clusters/ or templates/ here
    work.mkdir()
    where = _run(
        [
            str(python),
            "-c",
            "import hpcllm, hpcllm.paths as p; print(hpcllm.__file__); "
            "print(p.project_folder('clusters', 'X')); print(p.project_folder('templates', 'X'))",
        ],
        work,
        env,
    )
    module, clusters, templates = where.split()
    assert module.startswith(str(venv)) and clusters == str(venv / "share" / "hpcllm" / "clusters")
    assert templates == str(venv / "share" / "hpcllm" / "templates")

    hpcllm = str(venv / "bin" / "hpcllm")
    assert {"leonardo", "marenostrum5", "local"} <= set(_run([hpcllm, "clusters"], work, env).split())
    (work / "e.yaml").write_text(
        textwrap.dedent("""\
        name: e
        resources: {nodes: 2}
        training: {model: {preset: 2.7b}, data: {path: /data/x}, parallel: {precision: BF_16}}
        expected: {leonardo: {seed: {samples_per_s: [-0.05, null]}}}
        """)
    )
    _run([hpcllm, "submit", "e.yaml", "--cluster", "leonardo", "--account", "acct", "--dry-run"], work, env)
    (script,) = (work / "results" / "e" / "leonardo").rglob("job.sbatch")
    assert "#SBATCH --partition=boost_usr_prod" in script.read_text()  # the shipped profile and template
    (manifest,) = (work / "results").rglob("manifest.json")
    assert "seed leonardo row 1" in manifest.read_text()  # the shipped seed rows
    compared = _run([hpcllm, "collect", "-r", "results", "--compare", "seed", "-f", "csv"], work, env)
    assert compared.count("\nnot run,") == 49
    _run([hpcllm, "report", "-r", "results", "-o", "r.html"], work, env)  # the shipped report template
    assert (work / "r.html").read_text().startswith("<!DOCTYPE html>")

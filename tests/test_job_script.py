"""The rendered batch script on a site: CPUs restated on the step, each rank's thread share, NCCL
defaults, and a module that fails to load stops the job at once (run for real with bash)."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from hpcllm.config.cluster import ClusterProfile, load_cluster
from hpcllm.config.experiment import load_experiment
from hpcllm.config.loader import load_model
from hpcllm.errors import ConfigError
from hpcllm.launch.backends.slurmtext import script_error
from hpcllm.launch.render import render_job
from hpcllm.plan.expand import expand_experiment
from hpcllm.rundir import RunDir

REPO = Path(__file__).resolve().parents[1]


def _script(cluster: ClusterProfile, experiment: str, run_dir: Path, index: int = 0) -> str:
    path = REPO / "experiments" / experiment
    spec = expand_experiment(load_experiment(path), cluster, str(path), account="acct", refused=[])[index]
    return render_job(spec, cluster, RunDir(run_dir), account="acct")


@pytest.mark.parametrize("name,cpus,threads", [("leonardo", 32, 6), ("marenostrum5", 80, 18)])
def test_the_step_restates_its_cpus_and_each_rank_gets_its_share(
    in_project, tmp_path: Path, name: str, cpus: int, threads: int
) -> None:
    text = _script(load_cluster(name), "scaling_2.7b.yaml", tmp_path / "r")
    srun = next(line for line in text.splitlines() if line.startswith("srun "))
    assert f"--cpus-per-task={cpus}" in srun and "--cpu-bind=cores" in srun
    # 4 ranks a node share the cores; 2 loader workers a rank (the experiment's data.num_workers)
    assert f"export OMP_NUM_THREADS={threads}\n" in text
    assert "export NCCL_DEBUG=${NCCL_DEBUG:-WARN}\n" in text and "export NCCL_SOCKET_IFNAME=ib\n" in text
    assert "export GLOO_SOCKET_IFNAME=ib0\n" in text
    assert "module load nccl" not in text  # torch's own NCCL, not the site's


def test_the_profiles_env_overrides_the_derived_thread_count(in_project, tmp_path: Path) -> None:
    text = _script(load_cluster("localslurm"), "smoke.yaml", tmp_path / "r")
    assert text.index("export OMP_NUM_THREADS=2\n") < text.index("export OMP_NUM_THREADS=1\n")  # the last one wins


def test_a_site_nccl_module_needs_the_profile_to_say_so(tmp_path: Path) -> None:
    base = (
        "name: x\nscheduler: slurm\ngpu_type: A100\ngpus_per_node: 4\ncpus_per_node: 32\n"
        "modules: [cuda/12.1, nccl/2.19]\n"
    )
    (tmp_path / "x.yaml").write_text(base)
    with pytest.raises(
        ConfigError,
        match=r"modules: 'nccl/2\.19' would put the site's NCCL ahead of the one torch ships with; "
        r"remove it, or set system_nccl: true",
    ):
        load_model(ClusterProfile, tmp_path / "x.yaml")
    (tmp_path / "x.yaml").write_text(base + "system_nccl: true\n")
    assert load_model(ClusterProfile, tmp_path / "x.yaml").modules == ["cuda/12.1", "nccl/2.19"]


FAKE_MODULE = """#!/bin/sh
# Stands in for Lmod: purge and known modules work; an unknown one fails as Lmod does (exit 1).
echo "module $*" >> "$MODULE_CALLS"
case "$1 $2" in
  "load nosuch/"*)
    echo "Lmod has detected the following error: The following module(s) are unknown: \\"$2\\"" >&2
    exit 1 ;;
esac
exit 0
"""


def _site_script(tmp_path: Path, modules: list[str]) -> Path:
    """A localslurm job script whose profile loads ``modules`` and announces its set-up lines."""
    profile = yaml.safe_load((REPO / "clusters" / "localslurm.yaml").read_text())
    profile.update(modules=modules, setup=["echo SETUP-RAN"], python="false")
    cluster = ClusterProfile.model_validate(profile)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    script = run_dir / "job.sbatch"
    script.write_text(_script(cluster, "smoke.yaml", run_dir))
    return script


def _run(script: Path, tmp_path: Path, with_module: bool) -> subprocess.CompletedProcess[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    if with_module:
        (bin_dir / "module").write_text(FAKE_MODULE)
        (bin_dir / "module").chmod(0o755 | stat.S_IEXEC)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "MODULE_CALLS": str(tmp_path / "calls")}
    return subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=60)


def test_a_module_that_fails_to_load_stops_the_job_with_a_clear_line(in_project, tmp_path: Path) -> None:
    proc = _run(_site_script(tmp_path, ["good/1.0", "nosuch/2.0", "later/3.0"]), tmp_path, with_module=True)
    assert proc.returncode == 1
    assert (
        proc.stdout.splitlines()[-1]
        == "[hpcllm] error: module load nosuch/2.0 failed; check the name with: module avail nosuch"
    )
    assert "The following module(s) are unknown" in proc.stderr  # the module system's own words stay in the log
    assert "SETUP-RAN" not in proc.stdout  # nothing after the failed load ran
    assert (tmp_path / "calls").read_text().splitlines() == [
        "module purge",
        "module load good/1.0",
        "module load nosuch/2.0",
    ]
    # What `hpcllm status` gives as the reason of a job that ended in its set-up: the log's line.
    run_dir = RunDir(tmp_path / "run")
    run_dir.log_file("41").write_text(proc.stdout + proc.stderr)
    assert script_error(run_dir, "41") == "module load nosuch/2.0 failed; check the name with: module avail nosuch"


def test_a_node_without_a_module_command_says_so(in_project, tmp_path: Path) -> None:
    proc = _run(_site_script(tmp_path, ["good/1.0"]), tmp_path, with_module=False)
    assert proc.returncode == 1
    assert "[hpcllm] error: the profile loads modules, but this node has no module command" in proc.stdout
    assert "SETUP-RAN" not in proc.stdout


def test_modules_that_load_let_the_job_go_on(in_project, tmp_path: Path) -> None:
    proc = _run(_site_script(tmp_path, ["good/1.0"]), tmp_path, with_module=True)
    assert "SETUP-RAN" in proc.stdout and "[hpcllm] error" not in proc.stdout
    assert proc.returncode == 1  # the profile's python is `false`: the start hook fails, as it should

"""Where results and checkpoints go: the profile's results root, the checkpoint estimate, and the
refusal when it cannot fit the free space or the Lustre quota."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from hpcllm.cli import app
from hpcllm.config.cluster import load_cluster
from hpcllm.config.experiment import load_experiment
from hpcllm.launch.orchestrate import submit_experiment
from hpcllm.launch.storage import StorageError, check_storage, parse_lfs_quota, room_at, storage_need
from hpcllm.plan.expand import expand_experiment

runner = CliRunner()
GB = 1e9


def test_a_2_7b_grid_keeps_one_32_gb_checkpoint_per_run(in_project) -> None:
    path = Path("experiments/scaling_2.7b.yaml")
    specs = expand_experiment(load_experiment(path), load_cluster("leonardo"), str(path), account="acct")
    need = storage_need(specs)
    # A 2.7B DCP checkpoint (fp32 weights + two Adam moments, 12 bytes x 2.67e9 parameters of the seed's
    # 2.7B) is about 32 GB (the 33 GB was our earlier 2.80B preset).
    assert need.runs == 18 and need.kept == 1 and 31 * GB < need.largest < 34 * GB
    assert 18 * 31 * GB < need.total < 18 * 34 * GB and need.peak == pytest.approx(2 * need.total, rel=0.01)
    assert "18 runs x 1 kept x up to 32." in need.describe()


@pytest.mark.parametrize(
    "output,expected",
    [
        ("  /leonardo_work  12000000  0  50000000  -  100  0  0  -\n", (12000000 * 1024, 50000000 * 1024)),
        ("/lus/home 60000000* 50000000 52000000 6d 10 0 0 -\n", (60000000 * 1024, 52000000 * 1024)),
        ("/a/very/long/lustre/mount/name\n      100       0   0    -   1  0 0 -\n", (100 * 1024, None)),
        ("lfs: quota: not supported\n", None),
    ],
)
def test_lfs_quota_output_is_read(output: str, expected: tuple[int, int | None] | None) -> None:
    assert parse_lfs_quota(output) == expected


def _fake_lfs(bin_dir: Path, kbytes_used: int, kbytes_limit: int) -> None:
    """An `lfs` that reports this quota for any user or group (what a Lustre client prints with -q)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "lfs"
    script.write_text(f"#!/bin/sh\necho '  /fake  {kbytes_used}  0  {kbytes_limit}  -  1  0  0  -'\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


def test_a_quota_tighter_than_df_is_the_room_and_refuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_lfs(tmp_path / "bin", kbytes_used=40_000_000, kbytes_limit=50_000_000)  # 10 GiB left of 50
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    rooms = room_at(tmp_path / "results" / "not-yet")
    assert rooms[0].source == f"`df {tmp_path}`" and 0 < rooms[0].free <= shutil.disk_usage(tmp_path).total
    assert [r.free for r in rooms[1:]] == [10_000_000 * 1024] * 2  # user and group
    spec_path = Path(__file__).resolve().parents[1] / "experiments" / "scaling_2.7b.yaml"
    specs = expand_experiment(
        load_experiment(spec_path),
        load_cluster(str(spec_path.parents[1] / "clusters" / "leonardo.yaml")),
        "x",
        account="acct",
    )[:1]
    with pytest.raises(
        StorageError,
        match=r"need 32\.\d GB of checkpoints \(1 run x 1 kept x 32\.\d GB.*only 10\.2 GB "
        r"is free there \(`lfs quota -q -u .*`: 4\d\.\d GB used of 51\.2 GB\); put results",
    ):
        check_storage(storage_need(specs), tmp_path / "results", profile_file="clusters/leonardo.yaml")


def _use_slurm_profile(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **overrides: object) -> None:
    """A SLURM profile of our own, ``site``, in $HPCLLM_CLUSTERS_DIR (sbatch is never reached in these tests)."""
    profile = yaml.safe_load((Path(__file__).resolve().parents[1] / "clusters" / "localslurm.yaml").read_text())
    profile.update(name="site", **overrides)
    folder = tmp_path / "clusters"
    folder.mkdir(exist_ok=True)
    (folder / "site.yaml").write_text(yaml.safe_dump(profile))
    monkeypatch.setenv("HPCLLM_CLUSTERS_DIR", str(folder))


def _experiment(tmp_path: Path, nodes: list[int], preset: str = "28b") -> Path:
    path = tmp_path / "big.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "big",
                "resources": {"time": "01:00:00"},
                "training": {
                    "model": {"preset": preset},
                    "data": {"path": "{scratch}/data"},
                    "checkpoint": {"keep_last": 2},
                },
                "grid": {"resources.nodes": nodes},
            }
        )
    )
    return path


def test_submit_refuses_checkpoints_that_cannot_fit_before_writing_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use_slurm_profile(
        monkeypatch, tmp_path, paths={"scratch": str(tmp_path / "scratch"), "results": str(tmp_path / "site-results")}
    )
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no sbatch: nothing could be queued even by mistake
    monkeypatch.delenv("HPCLLM_RESULTS", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "scratch" / "data").mkdir(parents=True)  # an input that exists: submit checks it first
    free = shutil.disk_usage(tmp_path).free
    nodes = [1, 2, 3, 4]
    assert len(nodes) * 2 * 336 * GB > free  # four 28B runs keeping two checkpoints each: ~2.7 TB
    with pytest.raises(
        StorageError,
        match=rf"{tmp_path / 'site-results'}: the runs to submit need 2\.\d TB of "
        r"checkpoints \(4 runs x 2 kept x up to 33\d\.\d GB.* is free there \(`df .*paths\.results in ",
    ):
        submit_experiment(_experiment(tmp_path, nodes), "site", account=None, memory_check=False)
    assert not (tmp_path / "site-results").exists() and not (tmp_path / "results").exists()


def test_runs_go_under_the_profiles_results_root_and_the_estimate_is_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use_slurm_profile(
        monkeypatch,
        tmp_path,
        paths={"scratch": "$HPCLLM_TEST_SCRATCH", "results": "$HPCLLM_TEST_WORK/{account}/results"},
    )
    monkeypatch.setenv("HPCLLM_TEST_WORK", str(tmp_path / "work"))
    monkeypatch.delenv("HPCLLM_TEST_SCRATCH", raising=False)
    monkeypatch.delenv("HPCLLM_RESULTS", raising=False)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(
        app,
        [
            "submit",
            str(_experiment(tmp_path, [1, 2], preset="125m")),
            "--cluster",
            "site",
            "--account",
            "proj",
            "--dry-run",
            "--no-memory-check",
        ],
        env={"COLUMNS": "250"},
    )
    assert result.exit_code == 0, result.output
    runs = sorted(p for p in (tmp_path / "work" / "proj" / "results" / "big" / "site").iterdir() if p.is_dir())
    assert len(runs) == 2
    # The data path keeps the site variable for the compute node; the login node warns it is unset here.
    assert (
        yaml.safe_load((runs[0] / "run.yaml").read_text())["data"]["sources"][0]["path"] == "$HPCLLM_TEST_SCRATCH/data"
    )
    assert "$HPCLLM_TEST_SCRATCH is not set on this login node (used in data.sources[0].path" in result.output
    assert "storage: 7.8 GB of checkpoints (2 runs x 2 kept x up to 1.9 GB" in result.output
    assert json.loads((runs[0] / "manifest.json").read_text())["state"] == "rendered"


def test_a_throughput_runs_checkpoints_still_carry_a_requeue(tmp_path: Path) -> None:
    """keep_last 1 and no final checkpoint (the scaling grids): a stop still saves, the resume still
    finishes, and what stays on disk is the one stop checkpoint."""
    from engine_support import make_store, write_run

    from hpcllm.engine.entry import run
    from hpcllm.rundir import EXIT_PREEMPTED, RunDir

    run_dir = RunDir(tmp_path / "r")
    cfg = write_run(
        run_dir.path,
        make_store(tmp_path / "store"),
        train={"steps": 4},
        checkpoint={"keep_last": 1, "at_end": False, "every_steps": 3},
    )
    run_dir.stop_file.touch()
    assert run(cfg) == EXIT_PREEMPTED
    assert sorted(p.name for p in run_dir.checkpoints.glob("step_*")) == ["step_1"]
    run_dir.stop_file.unlink()
    assert run(cfg) == 0
    assert json.loads(run_dir.summary.read_text())["status"] == "completed"
    # The periodic save at step 3 replaced the stop checkpoint (keep_last: 1); at_end: false saved no step 4.
    assert sorted(p.name for p in run_dir.checkpoints.glob("step_*")) == ["step_3"]

"""Resume for real: the engine under torchrun (gloo, CPU), killed, signalled, resharded, corrupted.

Every test compares against one uninterrupted 2-rank reference run of the tiny model on real text.
Losses are compared bitwise where the world size is the same (same ops in the same order on CPU),
and to 1e-5 where it changes (FSDP's reduce-scatter then sums gradients in another order).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from engine_support import REPO, engine_cmd, losses_checking_reruns, make_store, write_run

from hpcllm.engine.checkpoint import list_checkpoints, read_latest_pointer
from hpcllm.rundir import EXIT_PREEMPTED, RunDir

pytestmark = pytest.mark.integration

STEPS = 8
CKPT = {"every_steps": 2, "keep_last": 10}


def engine_env(restart: int = 0) -> dict[str, str]:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": str(REPO),
        "HPCLLM_RESTART_COUNT": str(restart),
    }


def run(config: Path, nproc: int = 2, restart: int = 0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        engine_cmd(config, nproc), cwd=REPO, env=engine_env(restart), capture_output=True, text=True, timeout=300
    )


def run_until(config: Path, pattern: str, act, nproc: int = 2) -> tuple[int, str]:
    """Start the engine, read its output until a line matches ``pattern``, call ``act(proc)``.

    Returns the exit code and the whole output. Reading blocks on the pipe (no polling, no sleeps).
    """
    proc = subprocess.Popen(
        engine_cmd(config, nproc),
        cwd=REPO,
        env=engine_env(),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    out = []
    assert proc.stdout is not None
    for line in proc.stdout:
        out.append(line)
        if re.search(pattern, line):
            act(proc)
            break
    out.append(proc.stdout.read())
    return proc.wait(timeout=300), "".join(out)


def worker_pid(torchrun_pid: int, rank: int) -> int:
    """The pid of torchrun's worker with RANK=``rank`` (from /proc, Linux)."""
    children = Path(f"/proc/{torchrun_pid}/task/{torchrun_pid}/children").read_text().split()
    for pid in children:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in env:
            return int(pid)
    raise AssertionError(f"no worker with RANK={rank} among {children}")


def unwrapped(text: str) -> str:
    """The engine prints with rich, which may wrap long lines: compare with whitespace collapsed."""
    return " ".join(text.split())


def metrics(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def losses(run_dir: Path) -> dict[int, float]:
    """Loss per step, one line per step; re-run steps must repeat the first attempt's loss exactly."""
    return losses_checking_reruns(metrics(run_dir))


def summary(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_store(tmp_path_factory.mktemp("data") / "store")


@pytest.fixture(scope="module")
def reference(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted 2-rank run of STEPS steps with a checkpoint every 2 steps."""
    run_dir = tmp_path_factory.mktemp("ref") / "run"
    res = run(write_run(run_dir, store, train={"steps": STEPS}, checkpoint=CKPT))
    assert res.returncode == 0, res.stdout + res.stderr
    assert sorted(losses(run_dir)) == list(range(1, STEPS + 1))
    return run_dir


def fresh_run(tmp_path: Path, store: Path, **overrides: Any) -> tuple[Path, Path]:
    run_dir = tmp_path / "run"
    cfg = {"train": {"steps": STEPS}, "checkpoint": CKPT}
    for key, value in overrides.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    return run_dir, write_run(run_dir, store, **cfg)


@pytest.mark.parametrize("async_save", [False, True], ids=["sync", "async"])
def test_sigkill_one_rank_then_restart_gives_identical_losses(
    tmp_path: Path, store: Path, reference: Path, async_save: bool
) -> None:
    run_dir, config = fresh_run(tmp_path, store, checkpoint={"async_save": async_save})
    code, out = run_until(config, r"step\s+5/", lambda p: os.kill(worker_pid(p.pid, 1), signal.SIGKILL))
    assert code != 0, out
    killed_at = max(rec["step"] for rec in metrics(run_dir))
    resumed_from = int(read_latest_pointer(run_dir / "checkpoints").name.removeprefix("step_"))
    assert resumed_from < killed_at <= STEPS - 1, out

    res = run(config, restart=1)
    assert res.returncode == 0, res.stdout + res.stderr
    assert losses(run_dir) == losses(reference)  # bitwise, every step
    second = [r for r in metrics(run_dir) if r["restart"] == 1]
    assert second[0]["step"] == resumed_from + 1
    assert [r["step"] for r in second if r["rerun"]] == list(range(resumed_from + 1, killed_at + 1))
    assert summary(run_dir)["status"] == "completed"


def test_stop_file_preempts_all_ranks_and_next_start_resumes(tmp_path: Path, store: Path, reference: Path) -> None:
    run_dir, config = fresh_run(tmp_path, store, checkpoint={"every_steps": None})
    (run_dir / "STOP").touch()  # present from the start: the first step boundary stops
    res = run(config)
    assert res.returncode != 0  # torchrun turns the workers' 75 into its own 1 ...
    assert f"exitcode  : {EXIT_PREEMPTED}" in res.stdout + res.stderr  # ... and reports theirs
    s = summary(run_dir)
    assert (s["status"], s["steps_completed"]) == ("preempted", 1)
    assert [c.step for c in list_checkpoints(run_dir / "checkpoints")] == [1]

    (run_dir / "STOP").unlink()  # the batch script's job before relaunching
    res = run(config, restart=1)
    assert res.returncode == 0, res.stdout + res.stderr
    assert losses(run_dir) == losses(reference)
    assert not any(r["rerun"] for r in metrics(run_dir)), "nothing was lost, nothing is re-run"


def test_single_process_preemption_exit_code(tmp_path: Path, store: Path) -> None:
    run_dir, config = fresh_run(tmp_path, store)
    (run_dir / "STOP").touch()
    res = run(config, nproc=1)
    assert res.returncode == EXIT_PREEMPTED, res.stdout + res.stderr


@pytest.mark.parametrize(
    ("sig", "target"),
    [(signal.SIGUSR1, "rank1"), (signal.SIGTERM, "torchrun")],
    ids=["SIGUSR1-to-rank1", "SIGTERM-to-torchrun"],
)
def test_signal_mid_run_checkpoints_and_resumes(
    tmp_path: Path, store: Path, reference: Path, sig: signal.Signals, target: str
) -> None:
    """SIGUSR1 reaching one rank stops all of them; SIGTERM to torchrun (scancel) is forwarded to all."""
    run_dir, config = fresh_run(tmp_path, store, checkpoint={"every_steps": None})

    def send(proc: subprocess.Popen[str]) -> None:
        os.kill(worker_pid(proc.pid, 1) if target == "rank1" else proc.pid, sig)

    code, out = run_until(config, r"step\s+3/", send)
    assert code != 0, out
    s = summary(run_dir)
    assert s["status"] == "preempted", out
    stopped = s["steps_completed"]
    assert 3 <= stopped < STEPS
    assert read_latest_pointer(run_dir / "checkpoints") == run_dir / "checkpoints" / f"step_{stopped}"

    res = run(config, restart=1)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"start at step {stopped}/{STEPS}" in unwrapped(res.stdout)
    assert losses(run_dir) == losses(reference)


@pytest.mark.parametrize(("nproc", "mbs"), [(1, 4), (4, 1)], ids=["2to1", "2to4"])
def test_resume_on_other_rank_counts(tmp_path: Path, store: Path, reference: Path, nproc: int, mbs: int) -> None:
    """Checkpoint of 2 ranks (MBS 2, GBS 4) continued on 1 rank (MBS 4) and 4 ranks (MBS 1).

    The global batch stays 4, so each later step reads the same global sample ids as the
    reference; its loss can only match if no sample was skipped or repeated and the optimizer
    state (Adam moments) was resharded correctly.
    """
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    for name in ("metrics.jsonl", "summary.json"):
        (run_dir / name).unlink()
    ckpts = run_dir / "checkpoints"
    for c in list_checkpoints(ckpts):
        if c.step > 4:
            shutil.rmtree(c.path)
    (ckpts / "latest").write_text("step_4\n")
    config = write_run(run_dir, store, train={"steps": STEPS, "micro_batch_size": mbs}, checkpoint=CKPT)
    res = run(config, nproc=nproc)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "start at step 4/" in unwrapped(res.stdout)
    assert "per-rank RNG states are not restored" in unwrapped(res.stderr)
    ref, got = losses(reference), losses(run_dir)
    assert sorted(got) == list(range(5, STEPS + 1))
    for step, loss in got.items():
        assert loss == pytest.approx(ref[step], rel=1e-5, abs=1e-6), step
    final = json.loads((ckpts / f"step_{STEPS}" / "trainer_state.json").read_text())
    assert final["world_size"] == nproc
    assert final["loader"]["consumed_samples"] == STEPS * 4  # samples 0..31, each read once


def test_corrupt_latest_is_skipped_with_a_warning(tmp_path: Path, reference: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    (run_dir / "metrics.jsonl").unlink()
    shard = sorted((run_dir / "checkpoints" / f"step_{STEPS}").glob("*.distcp"))[-1]
    os.truncate(shard, shard.stat().st_size // 3)
    config = run_dir / "run.yaml"
    res = run(config)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"skipping checkpoint {run_dir / 'checkpoints' / f'step_{STEPS}'}" in unwrapped(res.stderr)
    assert res.stderr.count("skipping checkpoint") == 1, "warned once per job, not once per rank"
    assert f"start at step {STEPS - 2}/{STEPS}" in unwrapped(res.stdout)
    assert losses(run_dir) == {s: v for s, v in losses(reference).items() if s > STEPS - 2}


def test_export_of_a_sharded_checkpoint_loads_in_transformers(tmp_path: Path, reference: Path) -> None:
    """A checkpoint written by 2 FSDP ranks exports whole: torch file and HF folder agree on logits."""
    import torch
    from transformers import LlamaForCausalLM
    from typer.testing import CliRunner

    from hpcllm.cli.ckpt import ckpt_app
    from hpcllm.engine.export import checkpoint_model_config
    from hpcllm.engine.model import GPT

    runner = CliRunner()
    for fmt, out in (("torch", tmp_path / "model.pt"), ("hf", tmp_path / "hf")):
        res = runner.invoke(ckpt_app, ["export", str(reference), "--format", fmt, "--output", str(out)])
        assert res.exit_code == 0, res.output
    cfg = checkpoint_model_config(reference / "checkpoints" / f"step_{STEPS}", RunDir(reference))
    model = GPT(cfg)
    model.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    hf = LlamaForCausalLM.from_pretrained(tmp_path / "hf", attn_implementation="eager").eval()
    tokens = torch.randint(0, cfg.vocab_size, (2, cfg.seq_len), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(hf(tokens).logits, model(tokens), rtol=1e-5, atol=1e-5)

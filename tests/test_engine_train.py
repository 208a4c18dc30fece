"""The engine end to end on one rank: metrics/summary contract, resume, stop, errors, smoke loss."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from engine_support import REPO, losses_checking_reruns, make_store, run_engine, write_run

from hpcllm.data.demo import write_demo
from hpcllm.engine.entry import run
from hpcllm.rundir import EXIT_PREEMPTED, RunDir

METRIC_KEYS = {
    "step",
    "loss",
    "lr",
    "grad_norm",
    "tokens_per_s",
    "samples_per_s",
    "mfu",
    "step_time_s",
    "mem_peak_gib",
    "job_id",
    "restart",
    "rerun",
    "skipped",
    "loss_scale",
    "time",
    "elapsed_s",
}
SUMMARY_KEYS = {
    "status",
    "run_id",
    "steps_completed",
    "final_loss",
    "n_params",
    "n_params_flops",
    "n_layers",
    "d_model",
    "seq_len",
    "world_size",
    "dp_size",
    "micro_batch_size",
    "grad_accum",
    "global_batch_size",
    "precision",
    "sharding",
    "activation_checkpointing",
    "ac_every",
    "compile",
    "gpu_type",
    "device",
    "samples_per_s",
    "tokens_per_s",
    "tokens_per_s_per_gpu",
    "mfu",
    "step_time_s",
    "mem_peak_gib",
    "steps_measured",
    "summary_warmup_steps",
    "skipped_steps",
    "model",
    "mfu_with_head",
    "hfu",
    "elapsed_s",
    "wall_time_s",
}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_store(tmp_path_factory.mktemp("data") / "store")


def metrics(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in RunDir(run_dir).metrics.read_text().splitlines()]


def summary(run_dir: Path) -> dict[str, Any]:
    return json.loads(RunDir(run_dir).summary.read_text())


def test_run_writes_the_metrics_and_summary_contract(tmp_path: Path, store: Path) -> None:
    cfg = write_run(tmp_path / "r", store, train={"steps": 4, "grad_accum": 2, "summary_warmup_steps": 1})
    assert run(cfg) == 0
    rows = metrics(tmp_path / "r")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(set(r) == METRIC_KEYS for r in rows)
    assert all(r["mfu"] is None and r["restart"] == 0 and r["rerun"] is False for r in rows)
    assert all(r["skipped"] is False and r["loss_scale"] is None for r in rows)  # FP_32: no loss scaling
    s = summary(tmp_path / "r")
    assert set(s) >= SUMMARY_KEYS
    assert s["status"] == "completed" and s["steps_completed"] == 4 and s["steps_measured"] == 3
    assert s["global_batch_size"] == 4 and s["gpu_type"] == "cpu" and s["n_params"] == 131392
    assert s["final_loss"] == rows[-1]["loss"]
    # tokens/s is global: GBS x seq_len / step time
    assert rows[-1]["tokens_per_s"] == pytest.approx(4 * 64 / rows[-1]["step_time_s"])


# Training FLOPs per token of the tiny preset at seq_len 64 in the seed's convention, the `mfu` of
# metrics.jsonl (docs/reports.md): 72·L·d² + 12·L·T·d with L = 2 layers, d = 64, T = 64:
# 72·2·4,096 = 589,824 plus 12·2·64·64 = 98,304.
TINY_SEQ64_FLOPS_PER_TOKEN = 688_128


def test_mfu_uses_the_configured_cpu_peak(tmp_path: Path, store: Path) -> None:
    cfg = write_run(tmp_path / "r", store, metrics={"cpu_peak_flops": 1e11})
    assert run(cfg) == 0
    row = metrics(tmp_path / "r")[-1]
    # MFU = achieved FLOP/s / peak: tokens/s (GBS 2 x 64 / step time) x FLOPs per token / 1e11, 1 rank.
    assert row["tokens_per_s"] == pytest.approx(2 * 64 / row["step_time_s"])
    assert row["mfu"] == pytest.approx(row["tokens_per_s"] * TINY_SEQ64_FLOPS_PER_TOKEN / 1e11, rel=1e-12)
    assert summary(tmp_path / "r")["mfu"] > 0


def test_summary_has_three_flop_conventions(tmp_path: Path, store: Path) -> None:
    """MFU (seed: 72·L·d² + 12·L·T·d), MFU+head (exact matmul params) and HFU (+ AC recomputation),
    each checked by hand for the tiny model: L=2, d=64, T=64, 98,624 body + 32,768 head parameters."""
    cfg = write_run(
        tmp_path / "r", store, metrics={"cpu_peak_flops": 1e11}, parallel={"activation_checkpointing": "full"}
    )
    assert run(cfg) == 0
    s = summary(tmp_path / "r")
    seed = 72 * 2 * 64**2 + 12 * 2 * 64 * 64
    with_head = 6 * (98_624 + 512 * 64) + 12 * 2 * 64 * 64
    block = (98_624 - 64) // 2
    hardware = with_head + 2 * (2 * block + 4 * 64 * 64)  # both blocks run their forward twice
    tokens_per_s = s["samples_per_s"] * 64
    assert s["mfu"] == pytest.approx(tokens_per_s * seed / 1e11, rel=1e-6)
    assert s["mfu_with_head"] == pytest.approx(tokens_per_s * with_head / 1e11, rel=1e-6)
    assert s["hfu"] == pytest.approx(tokens_per_s * hardware / 1e11, rel=1e-6)


def test_wall_time_adds_up_the_attempts(tmp_path: Path, store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each metrics line says how long its attempt had run; the summary adds the earlier attempts."""
    d = tmp_path / "r"
    cfg = write_run(d, store, train={"steps": 2}, checkpoint={"every_steps": 2})
    assert run(cfg) == 0
    first = summary(d)
    assert first["wall_time_s"] == first["elapsed_s"] >= metrics(d)[-1]["elapsed_s"] > 0
    write_run(d, store, train={"steps": 4}, checkpoint={"every_steps": 2})
    monkeypatch.setenv("HPCLLM_RESTART_COUNT", "1")
    assert run(cfg) == 0
    second, rows = summary(d), metrics(d)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert second["wall_time_s"] == pytest.approx(rows[1]["elapsed_s"] + second["elapsed_s"], abs=1e-3)


def test_log_every_thins_the_metrics_file(tmp_path: Path, store: Path) -> None:
    cfg = write_run(tmp_path / "r", store, train={"steps": 4, "log_every": 2})
    assert run(cfg) == 0
    assert [r["step"] for r in metrics(tmp_path / "r")] == [2, 4]
    assert summary(tmp_path / "r")["steps_completed"] == 4


def test_lr_schedule_reaches_the_metrics(tmp_path: Path, store: Path) -> None:
    cfg = write_run(
        tmp_path / "r",
        store,
        train={"steps": 4},
        schedule={"name": "linear", "warmup_steps": 2, "min_lr_ratio": 0.0},
        optim={"lr": 1e-3},
    )
    assert run(cfg) == 0
    assert [r["lr"] for r in metrics(tmp_path / "r")] == pytest.approx([5e-4, 1e-3, 1e-3, 0.0])


def test_resume_continues_and_marks_rerun_steps(tmp_path: Path, store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / "r"
    cfg = write_run(d, store, train={"steps": 3}, checkpoint={"every_steps": 2, "at_end": False})
    assert run(cfg) == 0  # checkpoint at step 2, step 3 logged but not saved
    first = metrics(d)
    write_run(d, store, train={"steps": 5}, checkpoint={"every_steps": 2, "at_end": False})
    monkeypatch.setenv("HPCLLM_RESTART_COUNT", "1")
    assert run(cfg) == 0
    rows = metrics(d)[3:]
    assert [(r["step"], r["rerun"], r["restart"]) for r in rows] == [(3, True, 1), (4, False, 1), (5, False, 1)]
    assert rows[0]["loss"] == first[2]["loss"]  # same data and weights again: the same loss, exactly
    assert losses_checking_reruns(metrics(d)) == {r["step"]: r["loss"] for r in first + rows[1:]}


def test_no_resume_starts_from_step_zero(tmp_path: Path, store: Path) -> None:
    d = tmp_path / "r"
    cfg = write_run(d, store, train={"steps": 2}, checkpoint={"at_end": True})
    assert run(cfg) == 0
    assert run(cfg, resume=False) == 0
    assert [r["step"] for r in metrics(d)] == [1, 2, 1, 2]
    write_run(d, store, train={"steps": 2}, checkpoint={"at_end": True, "resume": False})
    assert run(cfg) == 0
    assert [r["step"] for r in metrics(d)][-2:] == [1, 2]


def test_stop_file_saves_and_exits_preempted(tmp_path: Path, store: Path) -> None:
    d = tmp_path / "r"
    cfg = write_run(d, store, train={"steps": 4})
    RunDir(d).stop_file.touch()
    assert run(cfg) == EXIT_PREEMPTED
    s = summary(d)
    assert s["status"] == "preempted" and s["steps_completed"] == 1
    assert (RunDir(d).checkpoints / "step_1").is_dir()
    RunDir(d).stop_file.unlink()
    assert run(cfg) == 0
    assert summary(d)["status"] == "completed"
    assert [r["step"] for r in metrics(d)] == [1, 2, 3, 4]


def test_inconsistent_global_batch_is_a_config_error(tmp_path: Path, store: Path) -> None:
    cfg = write_run(tmp_path / "r", store, train={"global_batch_size": 7})
    proc = run_engine(cfg)
    assert proc.returncode == 2
    assert "train.global_batch_size: 7 != micro_batch_size 2 x grad_accum 1 x data-parallel size 1" in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert summary(tmp_path / "r")["status"] == "failed"


def test_model_vocab_smaller_than_data_is_a_config_error(tmp_path: Path, store: Path) -> None:
    cfg = write_run(tmp_path / "r", store, model={"preset": "tiny", "seq_len": 64, "vocab_size": 128})
    assert run(cfg) == 2
    s = summary(tmp_path / "r")
    assert s["status"] == "failed" and "set model.vocab_size >= 257" in s["error"]


def test_invalid_yaml_key_exits_2_with_one_line(tmp_path: Path, store: Path) -> None:
    cfg = write_run(tmp_path / "r", store, train={"stepz": 3})
    proc = run_engine(cfg)
    assert proc.returncode == 2
    assert "train.stepz: unknown key" in proc.stderr


def test_masked_instruction_data_trains(tmp_path: Path) -> None:
    _, result = write_demo(tmp_path / "instruct", instruct=True, overwrite=True, with_debian_docs=False)
    assert result.header.has_loss_mask
    cfg = write_run(tmp_path / "r", tmp_path / "instruct", train={"steps": 2})
    assert run(cfg) == 0
    assert summary(tmp_path / "r")["status"] == "completed"


def test_distillation_from_a_teacher_checkpoint(tmp_path: Path, store: Path) -> None:
    teacher_dir = tmp_path / "teacher"
    assert run(write_run(teacher_dir, store, train={"steps": 2}, checkpoint={"at_end": True})) == 0
    teacher = {"preset": "tiny", "seq_len": 64}
    cfg = write_run(
        tmp_path / "student",
        store,
        train={"steps": 2},
        optim={"lr": 1e-9},
        distill={"teacher": teacher, "teacher_checkpoint": str(teacher_dir), "alpha": 1.0},
    )
    assert run(cfg) == 0
    # The student starts from the same seed, hence the teacher's *initial* weights; the teacher
    # trained 2 steps, so the KL is small but positive, and far below the CE of either.
    kl = metrics(tmp_path / "student")[0]["loss"]
    assert 0 < kl < 0.1 * metrics(teacher_dir)[-1]["loss"]
    bad = write_run(tmp_path / "bad", store, distill={"teacher": teacher, "teacher_checkpoint": str(tmp_path)})
    assert run(bad) == 2
    assert "is not a run directory" in summary(tmp_path / "bad")["error"]
    short = write_run(
        tmp_path / "short",
        store,
        distill={"teacher": {"preset": "tiny", "seq_len": 32}, "teacher_checkpoint": str(teacher_dir)},
    )
    assert run(short) == 2
    assert "distill.teacher.seq_len: 32 is shorter than model.seq_len 64" in summary(tmp_path / "short")["error"]


def test_smoke_experiment_loss_goes_down(tmp_path: Path) -> None:
    """The training section of experiments/smoke.yaml, on the demo corpus, one rank."""
    training = yaml.safe_load((REPO / "experiments" / "smoke.yaml").read_text())["training"]
    write_demo(tmp_path / "demo", overwrite=True, with_debian_docs=False)
    training["data"]["path"] = str(tmp_path / "demo")
    training["device"] = "cpu"
    training["checkpoint"] = {"at_end": False}
    d = tmp_path / "smoke"
    d.mkdir()
    (d / "run.yaml").write_text(yaml.safe_dump(training))
    assert run(d / "run.yaml") == 0
    losses = [r["loss"] for r in metrics(d) if "loss" in r]  # eval lines carry eval_loss instead
    assert len(losses) == training["train"]["steps"]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 1.0, (first, last)
    evals = [r["eval_loss"] for r in metrics(d) if "eval_loss" in r]
    assert len(evals) == 4 and evals[-1] < evals[0] and summary(d)["eval_loss"] == evals[-1]


def test_rerun_boundary_ignores_a_torn_last_line(tmp_path: Path) -> None:
    from hpcllm.engine.metrics import earlier_attempts

    path = tmp_path / "metrics.jsonl"
    assert earlier_attempts(path)[0] == 0
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 7, "loss": 1.5}\n{"step": 8, "lo')
    assert earlier_attempts(path)[0] == 7


def test_restart_count_prefers_hpcllm_over_slurm(monkeypatch: pytest.MonkeyPatch) -> None:
    from hpcllm.engine.train import restart_count

    monkeypatch.delenv("HPCLLM_RESTART_COUNT", raising=False)
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    assert restart_count() == 0
    monkeypatch.setenv("SLURM_RESTART_COUNT", "3")
    assert restart_count() == 3
    monkeypatch.setenv("HPCLLM_RESTART_COUNT", "5")
    assert restart_count() == 5

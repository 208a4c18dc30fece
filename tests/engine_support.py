"""Shared helpers for the engine tests: a real byte-level token store and run directories.

The store holds real English text (the seed project's README, repeated with varied document
boundaries), tokenised with the byte tokenizer, so losses are those of real data.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from hpcllm.data.store import StoreWriter
from hpcllm.data.tokenizer import ByteTokenizer
from hpcllm.launch.manifest import Manifest, RunState, save_manifest
from hpcllm.rundir import RunDir

REPO = Path(__file__).resolve().parents[1]
SEED_TEXT = Path("/work/shared/seed/modalities-README.md")
PYTHON = sys.executable


def corpus_text() -> str:
    """Real text: the seed README if present, else this repository's Python sources."""
    if SEED_TEXT.is_file():
        return SEED_TEXT.read_text()
    return "\n".join(p.read_text() for p in sorted((REPO / "hpcllm").rglob("*.py")))


def make_store(path: Path, *, with_mask: bool = False) -> Path:
    """A byte-level store of paragraphs of real text; ``with_mask`` masks the first half of each."""
    tok = ByteTokenizer()
    paragraphs = [p for p in corpus_text().split("\n\n") if p.strip()]
    docs = [np.append(ids, tok.eos_id).astype(np.int64) for ids in tok.encode_batch(paragraphs)]
    masks = None
    if with_mask:
        masks = [(np.arange(d.size) >= d.size // 2).astype(np.uint8) for d in docs]
    writer = StoreWriter(
        path, vocab_size=tok.vocab_size, eos_id=tok.eos_id, tokenizer="byte", tokenizer_fingerprint=tok.fingerprint
    )
    writer.add(docs, masks)
    writer.commit()
    return path


def write_run(run_dir: Path, store: Path, **overrides: Any) -> Path:
    """A run.yaml for the tiny model on ``store``; ``overrides`` are merged section by section."""
    cfg: dict[str, Any] = {
        "run_id": run_dir.name,
        "device": "cpu",
        "model": {"preset": "tiny", "seq_len": 64},
        "train": {"steps": 4, "micro_batch_size": 2, "summary_warmup_steps": 1},
        "parallel": {"precision": "FP_32"},
        "schedule": {"name": "constant"},
        "data": {"path": str(store), "num_workers": 0},
        "checkpoint": {"at_end": False},
        # TensorBoard (on by default) costs ~1 s of import per run; tests of tracking turn it on.
        "tracking": {"tensorboard": False},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def torchrun(nproc: int) -> list[str]:
    """``torchrun`` on this machine with ``nproc`` ranks, as the start of a command line."""
    return [PYTHON, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]


def engine_cmd(config: Path, nproc: int = 1, *extra: str) -> list[str]:
    """The command that runs the engine on ``config``: ``torchrun`` when ``nproc`` > 1."""
    launcher = [PYTHON] if nproc == 1 else torchrun(nproc)
    return [*launcher, "-m", "hpcllm.engine", "--config", str(config), *extra]


def run_probe(script: str, *, timeout: int) -> subprocess.CompletedProcess[str]:
    """Run the probe ``script`` (a file beside this one) on 2 ranks, one thread each."""
    cmd = [*torchrun(2), str(Path(__file__).with_name(script))]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )


def run_engine(
    config: Path, nproc: int = 1, *extra: str, timeout: int = 240, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the engine as a process (``torchrun`` when ``nproc`` > 1) and return the result."""
    cmd = engine_cmd(config, nproc, *extra)
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)


def losses_checking_reruns(records: list[dict[str, Any]]) -> dict[int, float]:
    """One loss per step from metrics.jsonl records, checking every re-run step against the attempt
    that first ran it: after a resume the same step sees the same weights and batch (same ranks),
    so its loss must be identical, not merely dropped the way the collector drops it. Eval lines
    (no ``loss``; docs/run-contract.md) share their step with a training line and are left out."""
    records = [rec for rec in records if "loss" in rec]
    first: dict[int, float] = {}
    for rec in records:
        if not rec["rerun"]:
            assert rec["step"] not in first, f"step {rec['step']} logged twice without the rerun mark"
            first[rec["step"]] = rec["loss"]
    for rec in records:
        if rec["rerun"]:
            assert rec["step"] in first, f"re-run step {rec['step']} was never run before"
            assert rec["loss"] == first[rec["step"]], (
                f"step {rec['step']} re-run (restart {rec['restart']}) gave loss {rec['loss']!r}, "
                f"first run {first[rec['step']]!r}"
            )
    return first


def uninterrupted_losses(run_yaml: Path, steps: int, workdir: Path, nproc: int = 1) -> dict[int, float]:
    """Losses of steps 1..``steps`` of ``run_yaml``'s config run in one go, without checkpoints:
    the independent expectation for a run that was stopped, requeued and resumed. The config must
    not make the learning rate depend on ``train.steps`` (a constant schedule after warmup)."""
    cfg = yaml.safe_load(run_yaml.read_text())
    cfg["train"]["steps"] = steps
    cfg["checkpoint"] = {
        **cfg.get("checkpoint", {}),
        "every_steps": None,
        "every_minutes": None,
        "at_end": False,
        "resume": False,
    }
    run_dir = workdir / "uninterrupted"
    run_dir.mkdir(parents=True)
    (run_dir / "run.yaml").write_text(yaml.safe_dump(cfg))
    proc = run_engine(run_dir / "run.yaml", nproc, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return losses_checking_reruns(records)


def running_slurm_run(path: Path, *, max_restarts: int, nodes: str | None = None) -> RunDir:
    """A run directory whose manifest says job 42 of the local SLURM runs it on ``nodes``: what the
    batch script's hooks (hpcllm.launch.jobhooks) find when an attempt ends."""
    rd = RunDir(path)
    rd.path.mkdir()
    manifest = Manifest(
        run_id="r", experiment="e", cluster="localslurm", backend="slurm", state=RunState.RUNNING, job_id="42",
        nodes=nodes, max_restarts=max_restarts,
    )  # fmt: skip
    save_manifest(rd, manifest)
    return rd

"""Shared helpers for the engine tests: a real byte-level token store and run directories.

The store holds real English text (the seed project's README, repeated with varied document
boundaries), tokenised with the byte tokenizer, so losses are those of real data.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from hpcllm.data.store import StoreWriter
from hpcllm.data.tokenizer import ByteTokenizer

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
    writer = StoreWriter(path, vocab_size=tok.vocab_size, eos_id=tok.eos_id, tokenizer="byte",
                         tokenizer_fingerprint=tok.fingerprint)
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


def run_engine(config: Path, nproc: int = 1, *extra: str, timeout: int = 240,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the engine as a process (``torchrun`` when ``nproc`` > 1) and return the result."""
    if nproc == 1:
        cmd = [PYTHON, "-m", "hpcllm.engine", "--config", str(config), *extra]
    else:
        cmd = [PYTHON, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "hpcllm.engine", "--config", str(config), *extra]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)

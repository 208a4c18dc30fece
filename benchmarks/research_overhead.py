"""What evaluation, tracking and the held-out split cost, measured on this machine.

    .venv/bin/python benchmarks/research_overhead.py --workdir /tmp/hpcllm-bench-research

  * the held-out split: ``Holdout.view`` on stores of 10^5 and 10^6 documents (it hashes every
    document index once per process), and a batch of windows through the view vs the plain store;
  * one eval pass of ``--samples`` sequences vs one training step of the same model and batch,
    both with the engine's code (``Evaluator``; forward + backward + AdamW), tiny preset seq 128
    and a 4-layer d=256 model seq 512, one CPU rank;
  * TensorBoard: the time ``MetricsLog`` spends writing one step's line with the TensorBoard sink
    vs without it (median over 500 lines).

Prints one table per part; docs/performance.md quotes them.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from hpcllm.config.evaluation import EvalConfig
from hpcllm.config.model import ModelConfig
from hpcllm.config.training import DataConfig, OptimConfig
from hpcllm.data.holdout import Holdout
from hpcllm.data.store import StoreWriter, TokenStore
from hpcllm.data.tokenizer import ByteTokenizer
from hpcllm.engine.data import build_eval_batches
from hpcllm.engine.evaluate import Evaluator
from hpcllm.engine.losses import cross_entropy_sum
from hpcllm.engine.metrics import MetricsLog, Throughput
from hpcllm.engine.model import GPT, init_weights
from hpcllm.engine.optim import build_optimizer
from hpcllm.engine.tracking import TensorBoardSink

CPU = torch.device("cpu")
console = Console()


def median_s(fn: Callable[[], Any], n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def synthetic_store(path: Path, n_docs: int, seed: int = 0) -> TokenStore:
    """``n_docs`` documents of 50-1500 byte tokens (random bytes: only sizes matter here)."""
    if not (path / "header.json").exists():
        tok = ByteTokenizer()
        rng = np.random.default_rng(seed)
        with StoreWriter(
            path,
            vocab_size=tok.vocab_size,
            eos_id=tok.eos_id,
            tokenizer="byte",
            tokenizer_fingerprint=tok.fingerprint,
            overwrite=True,
        ) as w:
            for start in range(0, n_docs, 10_000):
                lengths = rng.integers(50, 1500, size=min(10_000, n_docs - start))
                tokens = rng.integers(0, 256, size=int(lengths.sum()) + lengths.size).astype(np.int64)
                ends = np.cumsum(lengths + 1)
                tokens[ends - 1] = tok.eos_id
                w.write(tokens, None, ends)
            w.commit()
    return TokenStore.open(path)


def split_table(workdir: Path) -> Table:
    table = Table(title="Held-out split (fraction 0.01)")
    for col in ("documents", "tokens", "Holdout.view (s)", "64x2049 windows, store (ms)", "same, via view (ms)"):
        table.add_column(col, justify="right")
    for n_docs in (100_000, 1_000_000):
        store = synthetic_store(workdir / f"docs{n_docs}", n_docs)
        build = median_s(lambda store=store: Holdout(0.01).view(store, "train"), 3)
        view = Holdout(0.01).view(store, "train")
        idx = np.random.default_rng(1).integers(0, view.n_windows(2048), size=64)
        plain = median_s(lambda store=store, idx=idx: store.windows(idx, 2048), 20)
        through = median_s(lambda view=view, idx=idx: view.windows(idx, 2048), 20)
        table.add_row(
            f"{n_docs:,}", f"{store.n_tokens:,}", f"{build:.2f}", f"{plain * 1e3:.1f}", f"{through * 1e3:.1f}"
        )
    return table


def eval_table(workdir: Path, samples: int) -> Table:
    store = synthetic_store(workdir / "docs100000", 100_000)
    data = DataConfig(sources=[{"path": str(store.path)}], holdout={"fraction": 0.05})
    table = Table(title=f"One eval pass of {samples} sequences vs one training step (1 CPU rank)")
    for col in ("model", "seq", "MBS", "train step (s)", "eval pass (s)", "eval / step"):
        table.add_column(col, justify="right")
    for cfg, mbs in (
        (ModelConfig.from_name("tiny", seq_len=128), 8),
        (
            ModelConfig.from_name(
                "tiny", seq_len=512, n_layers=4, d_model=256, n_heads=8, n_kv_heads=8, vocab_size=512
            ),
            4,
        ),
    ):
        torch.manual_seed(0)
        model = GPT(cfg)
        init_weights(model, 0)
        opt = build_optimizer(model, OptimConfig(), 1e-3)
        x = torch.randint(0, 256, (mbs, cfg.seq_len))

        def step(model: GPT = model, opt: torch.optim.Optimizer = opt, x: torch.Tensor = x) -> None:
            loss = cross_entropy_sum(model(x), x, None) / x.numel()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        batches = build_eval_batches(
            data, EvalConfig(samples=samples), seq_len=cfg.seq_len, micro_batch_size=mbs, dp_rank=0, dp_size=1
        )
        evaluator = Evaluator(EvalConfig(samples=samples), batches, CPU)
        step()
        train_s = median_s(step, 9)
        eval_s = median_s(lambda evaluator=evaluator, model=model: evaluator.evaluate(model, 1), 5)
        table.add_row(
            f"{cfg.n_params() / 1e6:.2f}M",
            str(cfg.seq_len),
            str(mbs),
            f"{train_s:.3f}",
            f"{eval_s:.3f}",
            f"{eval_s / train_s:.1f}x",
        )
    return table


def tracking_table(workdir: Path) -> Table:
    table = Table(title="Writing one metrics line (median of 500)")
    for col in ("sinks", "per line (ms)"):
        table.add_column(col, justify="right")
    record = dict(step=0, loss=2.5, lr=1e-3, grad_norm=0.7, step_time_s=0.25, mem_peak_gib=1.0)
    for name, with_tb in (("metrics.jsonl only", False), ("+ TensorBoard", True)):
        folder = Path(tempfile.mkdtemp(dir=workdir))
        sinks = [TensorBoardSink(folder / "tb", resume_step=0, config_text="")] if with_tb else []
        log = MetricsLog(
            path=folder / "metrics.jsonl",
            throughput=Throughput(8, 128, 1e6, 1, None),
            restart=0,
            log_every=1,
            enabled=True,
            sinks=sinks,
        )
        steps = iter(range(1, 10**9))
        per_line = median_s(lambda log=log, steps=steps: log.log(**{**record, "step": next(steps)}), 500)
        log.close()
        table.add_row(name, f"{per_line * 1e3:.3f}")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/hpcllm-bench-research"))
    parser.add_argument("--samples", type=int, default=64)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    console.print(split_table(args.workdir))
    console.print(eval_table(args.workdir, args.samples))
    console.print(tracking_table(args.workdir))


if __name__ == "__main__":
    main()

"""Store open time, first-batch and resume latency, and loader throughput vs the engine's appetite.

    .venv/bin/python benchmarks/data_loader.py --tokens 120_000_000 --workdir /tmp/hpcllm-bench-loader

Builds (once) a byte-tokenized store of at least ``--tokens`` tokens of real text (Python's
reference documentation, repeated), then measures on this machine:
  * ``TokenStore.open`` and sampler construction (median of 20, page cache warm);
  * first-batch latency of ``build_train_loader`` + ``next()`` (0 and 1 workers);
  * resume latency: ``load_state_dict`` at sample 10^9 then ``next()``;
  * loader samples/s for the smoke experiment's shape (tiny preset, seq 128, micro-batch 8) and
    for seq 2048, against the samples/s one CPU rank trains the tiny model at (forward, backward,
    AdamW step with the engine's model and loss). The loader must be >= 10x faster.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from hpcllm.config.model import ModelConfig
from hpcllm.config.training import DataConfig
from hpcllm.data.demo import topics
from hpcllm.data.sampler import Sampler
from hpcllm.data.store import StoreWriter, TokenStore
from hpcllm.data.tokenizer import ByteTokenizer
from hpcllm.engine.data import build_train_loader
from hpcllm.engine.losses import cross_entropy_sum
from hpcllm.engine.model import GPT, init_weights

CPU = torch.device("cpu")


def build_store(path: Path, n_tokens: int) -> None:
    """Real text, byte-tokenized, repeated to ``n_tokens``; streamed to the writer in copies."""
    tok = ByteTokenizer()
    docs = [np.append(a, tok.eos_id).astype(np.uint16) for a in tok.encode_batch(list(topics().values()))]
    per_copy = sum(d.size for d in docs)
    with StoreWriter(
        path,
        vocab_size=tok.vocab_size,
        eos_id=tok.eos_id,
        tokenizer="byte",
        tokenizer_fingerprint=tok.fingerprint,
        overwrite=True,
    ) as w:
        for _ in range(-(-n_tokens // per_copy)):
            w.add(docs)
        w.commit()


def median_s(fn, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def loader_rate(cfg: DataConfig, seq_len: int, mbs: int, seconds: float) -> float:
    loader = build_train_loader(cfg, seq_len=seq_len, micro_batch_size=mbs, dp_rank=0, dp_size=1, seed=0, device=CPU)
    next(loader)  # start workers outside the timing
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        next(loader)
        n += mbs
    rate = n / (time.perf_counter() - t0)
    loader.close()
    return rate


def engine_rate(seq_len: int, mbs: int, steps: int) -> float:
    """Samples/s of fwd + bwd + AdamW on the tiny model, one CPU rank, fp32 (the smoke setup)."""
    cfg = ModelConfig.from_name("tiny", seq_len=seq_len)
    model = GPT(cfg)
    init_weights(model, 0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, 257, (mbs, seq_len))  # token values do not change the cost of a step
    for i in range(steps + 2):
        if i == 2:
            t0 = time.perf_counter()
        loss = cross_entropy_sum(model(x), x, None) / x.numel()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return steps * mbs / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=120_000_000)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/hpcllm-bench-loader"))
    ap.add_argument(
        "--store",
        type=Path,
        default=None,
        help="Use this byte-tokenized store (e.g. from data_tokenize.py --keep) instead.",
    )
    ap.add_argument("--seconds", type=float, default=3.0, help="Per throughput measurement.")
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads; 1 = one rank per core, as the smoke run uses on CPU."
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    console = Console(width=150)
    store_path = args.store or args.workdir / "store"
    existing = TokenStore.open(store_path).n_tokens if (store_path / "header.json").exists() else 0
    if existing < args.tokens:
        t0 = time.perf_counter()
        build_store(store_path, args.tokens)
        console.print(f"built {store_path} in {time.perf_counter() - t0:.1f} s")
    n_tokens = TokenStore.open(store_path).n_tokens
    cfg = DataConfig(path=str(store_path), num_workers=0)

    t = Table(title=f"data loader on a store of {n_tokens:,} tokens ({torch.get_num_threads()} torch threads)")
    t.add_column("measurement")
    t.add_column("value", justify="right")
    t.add_row("TokenStore.open (median of 20)", f"{median_s(lambda: TokenStore.open(store_path), 20) * 1e3:.2f} ms")
    sampler_s = median_s(
        lambda: Sampler([str(store_path)], [1.0], tokenizer="byte", seq_len=2048, seed=0, shuffle=True), 20
    )
    t.add_row("Sampler(...) incl. open, seq 2048", f"{sampler_s * 1e3:.2f} ms")

    def first_batch(workers: int, resume_at: int | None = None) -> None:
        loader = build_train_loader(
            cfg.model_copy(update={"num_workers": workers}),
            seq_len=2048,
            micro_batch_size=8,
            dp_rank=0,
            dp_size=1,
            seed=0,
            device=CPU,
        )
        if resume_at is not None:
            sd = loader.state_dict()
            sd["consumed_samples"] = resume_at
            loader.load_state_dict(sd)
        next(loader)
        loader.close()

    t.add_row(
        "first batch (build + next), 0 workers, seq 2048 x 8", f"{median_s(lambda: first_batch(0), 5) * 1e3:.1f} ms"
    )
    t.add_row(
        "first batch (build + next), 1 worker, seq 2048 x 8", f"{median_s(lambda: first_batch(1), 3) * 1e3:.1f} ms"
    )
    t.add_row(
        "resume at sample 10^9 (load_state_dict + next), 0 workers",
        f"{median_s(lambda: first_batch(0, 10**9), 5) * 1e3:.1f} ms",
    )
    console.print(t)

    r = Table(title="loader samples/s vs the samples/s one CPU rank trains the tiny model at")
    for col in ("shape", "loader, 0 workers", "loader, 1 worker", "engine (tiny, fwd+bwd+AdamW)", "ratio (0 workers)"):
        r.add_column(col, justify="right")
    for seq_len, mbs in ((128, 8), (2048, 8)):
        l0 = loader_rate(cfg, seq_len, mbs, args.seconds)
        l1 = loader_rate(cfg.model_copy(update={"num_workers": 1}), seq_len, mbs, args.seconds)
        e = engine_rate(seq_len, mbs, steps=10 if seq_len <= 512 else 3)
        r.add_row(f"seq {seq_len} x mbs {mbs}", f"{l0:,.0f}", f"{l1:,.0f}", f"{e:,.1f}", f"{l0 / e:,.0f}x")
    console.print(r)


if __name__ == "__main__":
    main()

"""Decoding speed of ``hpcllm generate``: the KV cache against re-running the whole sequence.

Greedy decoding of a random-init model (speed does not depend on the weights), one sequence, on
the CPU with the threads given by OMP_NUM_THREADS. "no cache" is what decoding costs without
``KVCache``: a forward pass over the prompt and everything generated so far for every new token.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/generate.py --preset tiny --preset 60m
"""

from __future__ import annotations

import argparse
import time

import torch
from rich.console import Console
from rich.table import Table

from hpcllm.config.model import ModelConfig
from hpcllm.engine.generate import Sampling, decode
from hpcllm.engine.model import GPT, init_weights


@torch.no_grad()
def without_cache(model: GPT, prompt: list[int], n: int) -> list[int]:
    seq = torch.tensor([prompt])
    for _ in range(n):
        token = model(seq)[0, -1].argmax()
        seq = torch.cat([seq, token.view(1, 1)], dim=1)
    return seq[0, len(prompt) :].tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", action="append", help="model presets (default: tiny, 60m)")
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()
    table = Table(
        "preset",
        "params",
        "prompt + new",
        "KV cache (tok/s)",
        "no cache (tok/s)",
        "speed-up",
        title=f"greedy decoding on CPU, {torch.get_num_threads()} thread(s)",
    )
    for name in args.preset or ["tiny", "60m"]:
        cfg = ModelConfig.from_name(name)
        model = GPT(cfg).eval()
        init_weights(model, 0)
        prompt = torch.randint(0, 256, (args.prompt_tokens,), generator=torch.Generator().manual_seed(0)).tolist()
        n = min(args.new_tokens, cfg.seq_len - len(prompt))
        t0 = time.perf_counter()
        cached, _ = decode(model, prompt, n, Sampling(temperature=0), eos_id=None)
        t_cache = time.perf_counter() - t0
        t0 = time.perf_counter()
        plain = without_cache(model, prompt, n)
        t_plain = time.perf_counter() - t0
        assert cached == plain, "cached and uncached decoding disagree"
        table.add_row(
            name,
            f"{cfg.n_params() / 1e6:.1f}M",
            f"{len(prompt)} + {n}",
            f"{n / t_cache:.1f}",
            f"{n / t_plain:.1f}",
            f"{t_plain / t_cache:.1f}x",
        )
    Console().print(table)


if __name__ == "__main__":
    main()

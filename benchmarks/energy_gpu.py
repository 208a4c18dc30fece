"""GPU energy per token on a real GPU: the engine's NVML meter against sampled power, and the figures.

    python benchmarks/energy_gpu.py --preset 1b --mbs 4 --steps 30          # one GPU
    torchrun --nproc-per-node=8 benchmarks/energy_gpu.py --preset 2.7b       # summed over 8 GPUs

Runs the engine's ``train_step`` on a fixed batch for ``--steps`` steps between the meter's two
readings (hpcllm.engine.energy, ``nvmlDeviceGetTotalEnergyConsumption``), while a thread samples
``nvmlDeviceGetPowerUsage`` every 50 ms; the integral of the samples should agree with the counter
within ~10% (the counter is exact, the samples miss spikes). Prints joules per step (all ranks),
tokens per joule and kWh per billion tokens, the columns ``hpcllm collect`` shows. Needs
nvidia-ml-py (``pip install nvidia-ml-py``) and a Volta or newer GPU.
"""

from __future__ import annotations

import argparse
import threading
import time

import pynvml
import torch
import torch.distributed as dist
from fixed_batch import FixedBatch  # sibling module (benchmarks/ is on sys.path)
from rich.console import Console

from hpcllm.config.model import ModelConfig
from hpcllm.config.training import OptimConfig, ParallelConfig, ScheduleConfig
from hpcllm.engine.distributed import init_distributed
from hpcllm.engine.energy import EnergyMeter, nvml_handle
from hpcllm.engine.optim import Scheduler, build_optimizer
from hpcllm.engine.parallelize import build_mesh, build_parallel_model
from hpcllm.engine.state import TrainState
from hpcllm.engine.train import train_step

console = Console()


class PowerSampler(threading.Thread):
    """Integrates NVML's power reading (milliwatts) over time: an independent check of the counter."""

    def __init__(self, handle: object, every_s: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.handle, self.every_s, self.joules = handle, every_s, 0.0
        self._stop_event = threading.Event()

    def run(self) -> None:
        last = time.perf_counter()
        while not self._stop_event.wait(self.every_s):
            now = time.perf_counter()
            self.joules += pynvml.nvmlDeviceGetPowerUsage(self.handle) / 1e3 * (now - last)
            last = now

    def stop(self) -> float:
        self._stop_event.set()
        self.join()
        return self.joules


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="1b")
    p.add_argument("--mbs", type=int, default=4)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    args = p.parse_args()

    env = init_distributed("cuda")
    cfg = ModelConfig.from_name(args.preset)
    pcfg = ParallelConfig(precision="BF_16")
    model = build_parallel_model(cfg, pcfg, build_mesh(pcfg, env), env.device, seed=0)
    opt = build_optimizer(model, OptimConfig(), lr=1e-4)
    ids = torch.randint(0, cfg.vocab_size, (args.mbs, cfg.seq_len + 1), device=env.device)
    state = TrainState(
        model=model,
        optimizer=opt,
        loader=FixedBatch({"input_ids": ids[:, :-1], "labels": ids[:, 1:], "loss_mask": None}),
        scheduler=Scheduler(opt, base_lr=1e-4, total_steps=10**9, cfg=ScheduleConfig(name="constant")),
    )

    def step() -> None:
        train_step(state, grad_accum=1, dp_size=env.world_size, grad_clip=1.0, device=env.device)

    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    meter = EnergyMeter(env.device)
    if meter.why:
        raise SystemExit(f"no NVML energy here: {meter.why}")
    sampler = PowerSampler(nvml_handle(pynvml, env.device.index or 0))
    sampler.start()
    meter.start(0)
    started = time.perf_counter()
    for _ in range(args.steps):
        step()
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    sampled = torch.tensor([sampler.stop()], dtype=torch.float64, device=env.device)
    tokens_per_step = args.mbs * cfg.seq_len * env.world_size
    fields = meter.summary_fields(args.steps, tokens_per_step=tokens_per_step)
    if dist.is_initialized():
        dist.all_reduce(sampled)
    if env.is_main:
        counter = fields["gpu_energy_j"]
        console.print(
            f"{env.world_size} x {torch.cuda.get_device_name(env.device)}, {cfg.name}, MBS {args.mbs}, "
            f"{args.steps} steps in {elapsed:.1f} s\n"
            f"  NVML counter: {counter:.0f} J ({fields['gpu_energy_per_step_j']:.1f} J/step, "
            f"{counter / elapsed / env.world_size:.0f} W per GPU)\n"
            f"  sampled power: {float(sampled.item()):.0f} J ({float(sampled.item()) / counter:.1%} of the counter)\n"
            f"  tokens/J {fields['tokens_per_joule']:.1f}, "
            f"kWh per billion tokens {fields['kwh_per_billion_tokens']:.2f}"
        )


if __name__ == "__main__":
    main()

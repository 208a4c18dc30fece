"""``hpcllm model info/list``: numbers from ModelConfig and hpcllm.perf, no torch."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from hpcllm.cli.model import model_app
from hpcllm.config.model import ModelConfig, preset_names


@pytest.mark.parametrize("name", preset_names(), ids=preset_names())
def test_info_prints_params_and_flops(name: str) -> None:
    result = CliRunner().invoke(model_app, ["info", name])
    assert result.exit_code == 0, result.output
    cfg = ModelConfig.from_name(name)
    assert f"{cfg.n_params():,}" in result.output
    assert f"{cfg.n_params_non_embedding():,}" in result.output
    lines = result.output.splitlines()
    seed = next(line for line in lines if "72·L·d² + 12·L·T·d" in line)
    six_n = next(line for line in lines if "6N + 12·L·T·d" in line)
    # each figure beside its own formula (the seed's was once labelled 6N)
    assert f"{cfg.flops_per_token():.4g} = 72·L·d²" in seed and "MFU " in seed
    assert f"{cfg.flops_per_token_with_head():.4g} = 6N" in six_n and "MFU+head" in six_n


def test_info_for_the_seed_27b() -> None:
    out = CliRunner().invoke(model_app, ["info", "2.7b", "--seq-len", "2048"]).output
    assert "32 / 2560" in out and "seq 2048" in out


def test_unknown_name_lists_the_known_ones() -> None:
    result = CliRunner().invoke(model_app, ["info", "3b"])
    assert result.exit_code == 2
    assert "'3b' is not a model preset; known presets: tiny, 60m, 125m" in result.output


def test_list_names_every_preset() -> None:
    out = CliRunner().invoke(model_app, ["list"]).output
    assert all(name in out for name in preset_names())


def test_model_cli_does_not_import_torch() -> None:
    code = "import sys, hpcllm.cli.model; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def _spec(name: str, mbs: int, gpus: int, per_node: int, device: str = "cuda", **parallel: object):
    from hpcllm.config.training import ParallelConfig
    from hpcllm.plan.memory import MemorySpec

    return MemorySpec(ModelConfig.from_name(name), ParallelConfig(**parallel), mbs, gpus, per_node, device=device)


def test_info_prints_every_memory_term_and_the_peak() -> None:
    from hpcllm.plan.memory import estimate_memory

    out = (
        CliRunner()
        .invoke(model_app, ["info", "2.7b", "--mbs", "2", "--gpus", "8", "--gpus-per-node", "4"], terminal_width=200)
        .output
    )
    est = estimate_memory(_spec("2.7b", 2, 8, 4))
    for term in est.terms:
        assert f"{term.name}" in out and f"{term.gib:.2f}" in out
    assert f"{est.peak_gib:.2f}" in out and "backward start" in out


def test_info_with_a_cluster_gives_the_verdict_and_the_largest_mbs() -> None:
    from hpcllm.plan.memory import estimate_memory

    result = CliRunner().invoke(
        model_app, ["info", "2.7b", "--mbs", "8", "--gpus", "8", "--cluster", "leonardo"], terminal_width=200
    )
    assert result.exit_code == 0, result.output
    assert "of 64 GiB per GPU: does not fit" in result.output
    best = int(result.output.split("largest MBS that fits: ")[1].split()[0])
    assert (
        estimate_memory(_spec("2.7b", best, 8, 4)).peak_gib
        <= 64
        < estimate_memory(_spec("2.7b", best + 1, 8, 4)).peak_gib
    )


def test_info_on_a_cpu_profile_speaks_of_ranks() -> None:
    out = CliRunner().invoke(model_app, ["info", "tiny", "--mbs", "8", "--cluster", "local"], terminal_width=200).output
    assert "memory per rank" in out and "of 4 GiB per rank: fits" in out


def test_info_rejects_inconsistent_parallel_options() -> None:
    result = CliRunner().invoke(model_app, ["info", "125m", "--hsdp-shard-size", "2"])
    assert result.exit_code == 2
    assert "hsdp_shard_size is only used with sharding: HYBRID_SHARD" in result.output

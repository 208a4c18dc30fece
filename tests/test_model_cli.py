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
    assert f"{cfg.flops_per_token():.4g}" in result.output


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

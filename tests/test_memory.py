"""Checkpoint size from a model config, against the measured size of a real 125m checkpoint."""

from __future__ import annotations

from hpcllm.config.model import ModelConfig
from hpcllm.memory import checkpoint_bytes


def test_125m_checkpoint_matches_the_measured_save() -> None:
    # docs/performance.md: a 125m DCP checkpoint on disk is 1857 MiB.
    size_mib = checkpoint_bytes(ModelConfig.from_name("125m")) / 2**20
    assert abs(size_mib - 1857) < 2


def test_2_7b_checkpoint_is_about_32_gb() -> None:
    # 2.67 B parameters (tied embeddings, as the seed's 2.7B) x 12 bytes
    assert 31e9 < checkpoint_bytes(ModelConfig.from_name("2.7b")) < 33e9

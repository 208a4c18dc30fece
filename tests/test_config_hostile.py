"""The YAML reader and the grid under hostile input, where the CLI-level set (test_adversarial.py)
cannot see the detail: what is still accepted, and that limits are checked without expanding."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcllm.config import grid as gridlib
from hpcllm.config.loader import MAX_CONFIG_BYTES, read_yaml
from hpcllm.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_merge_keys_and_their_overrides_are_not_repeated_keys(tmp_path: Path) -> None:
    text = "base: &b {lr: 1.0e-3, steps: 10}\nrun:\n  <<: *b\n  steps: 20\n"
    assert read_yaml(write(tmp_path, text)) == {"base": {"lr": 1e-3, "steps": 10}, "run": {"lr": 1e-3, "steps": 20}}


def test_same_key_in_different_mappings_is_fine_but_not_twice_in_one(tmp_path: Path) -> None:
    assert read_yaml(write(tmp_path, "a: {x: 1}\nb: {x: 2}\n")) == {"a": {"x": 1}, "b": {"x": 2}}
    with pytest.raises(ConfigError, match=r"c\.yaml:3: b\.x: given twice, at lines 2 and 3"):
        read_yaml(write(tmp_path, "b:\n  x: 1\n  x: 2\n"))


def test_a_key_as_int_and_as_string_are_two_keys(tmp_path: Path) -> None:
    assert read_yaml(write(tmp_path, "1: a\n'1': b\n")) == {1: "a", "1": "b"}


def test_aliases_below_the_limit_still_work(tmp_path: Path) -> None:
    text = "nodes: &n [1, 2, 4]\ngrid: {resources.nodes: *n}\nagain: *n\n"
    assert read_yaml(write(tmp_path, text))["again"] == [1, 2, 4]


def test_reading_is_bounded(tmp_path: Path) -> None:
    """/dev/zero never ends and a FIFO waits for a writer forever: neither is read (`clusters show`
    hung on a FIFO profile); a file over the limit is not read whole."""
    import os

    with pytest.raises(ConfigError, match="/dev/zero: cannot read: is a character device, not a file"):
        read_yaml(Path("/dev/zero"))
    os.mkfifo(tmp_path / "fifo.yaml")
    with pytest.raises(ConfigError, match=r"fifo\.yaml: cannot read: is a FIFO, not a file"):
        read_yaml(tmp_path / "fifo.yaml")
    (tmp_path / "big.yaml").write_text("x: 1\n" * MAX_CONFIG_BYTES)
    with pytest.raises(ConfigError, match=rf"big\.yaml: larger than {MAX_CONFIG_BYTES:,} bytes"):
        read_yaml(tmp_path / "big.yaml")


@pytest.mark.parametrize("text", ["x: .nan\n", "x: -.Inf\n", "x: [1.5e+400]\n"])
def test_non_finite_numbers_are_refused(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match=r"c\.yaml:1: x.*is not a finite number"):
        read_yaml(write(tmp_path, text))


def test_grid_points_are_counted_without_expanding() -> None:
    # 10**20 points: expanding would never finish; counting is immediate and names every axis.
    grid = {f"train.a{i}": list(range(10)) for i in range(20)}
    with pytest.raises(
        ValueError,
        match=r"grid: 10 \(train\.a0\) x .* x 10 \(train\.a19\) = "
        r"100,000,000,000,000,000,000 points; at most 10,000",
    ):
        gridlib.expand(grid, [])
    assert gridlib.check_size({"a": [1, 2, 3]}, [{"b": [1, 2], "c": [3, 4]}]) == 6


def test_where_arithmetic_on_numbers_still_works() -> None:
    doc = {"resources": {"nodes": 4}, "train": {"micro_batch_size": 2}}
    assert gridlib.compile_where("resources.nodes * train.micro_batch_size == 8")(doc)
    assert gridlib.compile_where("resources.nodes % 2 == 0 and -resources.nodes < 0")(doc)

"""Atomic writes: the old content survives a failed write, and permissions follow the umask."""

import os

import pytest

from hpcllm.fsutil import atomic_write_json, atomic_write_text, read_json


def test_replaces_and_leaves_no_temp_files(tmp_path):
    target = tmp_path / "m.json"
    atomic_write_json(target, {"a": 1})
    atomic_write_json(target, {"a": 2})
    assert read_json(target) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_failed_write_keeps_old_content(tmp_path):
    target = tmp_path / "m.json"
    atomic_write_json(target, {"a": 1})
    with pytest.raises(TypeError):
        atomic_write_text(target, object())  # type: ignore[arg-type]  # write() raises mid-way
    assert read_json(target) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_permissions_follow_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "f", "x")
        atomic_write_text(tmp_path / "job.sbatch", "#!/bin/bash\n", executable=True)
    finally:
        os.umask(old)
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "job.sbatch").stat().st_mode & 0o777 == 0o755


def test_read_json_missing_is_none(tmp_path):
    assert read_json(tmp_path / "nope.json") is None

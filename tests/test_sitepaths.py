"""Paths with site variables: expanded on the compute node, roots substituted on the login node."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from engine_support import make_store, write_run

from hpcllm.config.training import TrainingConfig
from hpcllm.engine.entry import run
from hpcllm.errors import ConfigError
from hpcllm.rundir import RunDir
from hpcllm.sitepaths import (
    absolute_on_login,
    expand_path,
    iter_site_paths,
    substitute_roots,
    unset_variables,
    variables_in,
)

ENV = {"CINECA_SCRATCH": "/leonardo_scratch/large/userexternal/ab12", "USER": "ab12", "EMPTY": ""}


@pytest.mark.parametrize(
    "value,expected",
    [
        ("$CINECA_SCRATCH/hpcllm/data", "/leonardo_scratch/large/userexternal/ab12/hpcllm/data"),
        ("${CINECA_SCRATCH}/x", "/leonardo_scratch/large/userexternal/ab12/x"),
        ("/gpfs/scratch/ehpc01/${USER}/data", "/gpfs/scratch/ehpc01/ab12/data"),
        ("/plain/path", "/plain/path"),
        ("byte", "byte"),
    ],
)
def test_expand_path_replaces_braced_and_plain_variables(value: str, expected: str) -> None:
    assert expand_path(value, "data.sources[0].path", ENV) == expected


def test_tilde_is_the_home_of_the_node_that_expands_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/ab12")
    assert expand_path("~/venvs/x", "k", {}) == "/home/ab12/venvs/x"
    assert expand_path("/a/~b", "k", {}) == "/a/~b"  # only a leading ~ means home


@pytest.mark.parametrize("value,missing", [("$SCRATCH/data", "$SCRATCH"), ("${EMPTY}/x", "$EMPTY")])
def test_an_unset_variable_names_the_key_and_the_variable(value: str, missing: str) -> None:
    with pytest.raises(ConfigError) as raised:
        expand_path(value, "data.tokenizer", ENV)
    assert str(raised.value).startswith(f"data.tokenizer: {missing} is not set on this node")
    assert repr(value) in str(raised.value)


def test_variables_and_unset_variables() -> None:
    assert variables_in("$A/${B}/c$") == ["A", "B"]
    assert unset_variables("$CINECA_SCRATCH/$SCRATCH", ENV) == ["SCRATCH"]


def test_roots_are_substituted_and_an_unknown_root_lists_the_known_ones() -> None:
    roots = {"scratch": "$CINECA_SCRATCH", "work": "/leonardo_work/ACCT"}
    assert substitute_roots("{scratch}/hpcllm/data", roots, "k", "cluster 'leonardo'") == "$CINECA_SCRATCH/hpcllm/data"
    assert substitute_roots("${HOME}/{work}", roots, "k", "x") == "${HOME}//leonardo_work/ACCT"
    with pytest.raises(
        ConfigError, match=r"k: \{fast\} is not a storage root of cluster 'leonardo' \(its paths: scratch, work\)"
    ):
        substitute_roots("{fast}/x", roots, "k", "cluster 'leonardo'")


def test_relative_paths_become_absolute_on_the_login_node_but_site_paths_do_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert absolute_on_login("data/demo") == str(tmp_path / "data" / "demo")
    assert absolute_on_login("$SCRATCH/x") == "$SCRATCH/x"
    assert absolute_on_login("~/x") == "~/x"


def test_every_path_field_of_the_training_config_is_found() -> None:
    cfg = TrainingConfig.model_validate(
        {
            "data": {"sources": [{"path": "$A/one"}, {"path": "two"}], "tokenizer": "$T/tokenizer.json"},
            "distill": {"teacher": {"preset": "tiny"}, "teacher_checkpoint": "~/teacher"},
        }
    )
    assert dict(iter_site_paths(cfg)) == {
        "data.sources[0].path": "$A/one",
        "data.sources[1].path": "two",
        "data.tokenizer": "$T/tokenizer.json",
        "distill.teacher_checkpoint": "~/teacher",
    }
    byte = TrainingConfig.model_validate({"data": {"path": "x", "tokenizer": "byte"}})
    assert dict(iter_site_paths(byte)) == {"data.sources[0].path": "x"}  # 'byte' is a keyword, not a path


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_store(tmp_path_factory.mktemp("data") / "store")


def test_the_engine_expands_site_variables_in_data_paths(
    tmp_path: Path, store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HPCLLM_TEST_SCRATCH", str(store.parent))
    cfg = write_run(
        tmp_path / "r",
        store,
        data={"path": f"${{HPCLLM_TEST_SCRATCH}}/{store.name}", "num_workers": 0},
        train={"steps": 2},
    )
    assert yaml.safe_load(cfg.read_text())["data"]["path"].startswith("${HPCLLM_TEST_SCRATCH}")
    assert run(cfg) == 0

    monkeypatch.delenv("HPCLLM_TEST_SCRATCH")
    failed = write_run(tmp_path / "f", store, data={"path": f"$HPCLLM_TEST_SCRATCH/{store.name}", "num_workers": 0})
    assert run(failed) == 2
    error = json.loads(RunDir(tmp_path / "f").summary.read_text())["error"]
    assert "data.sources[0].path: $HPCLLM_TEST_SCRATCH is not set on this node" in error
    assert str(failed) in error and os.uname().nodename in error

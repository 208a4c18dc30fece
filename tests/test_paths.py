"""Shared folders are found from a project directory, a checkout, or an installed copy."""

import sys

from hpcllm.paths import project_folder


def test_env_var_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("X_DIR", str(tmp_path / "x"))
    assert project_folder("clusters", "X_DIR") == tmp_path / "x"


def test_project_directory_first(tmp_path, monkeypatch):
    monkeypatch.delenv("X_DIR", raising=False)
    (tmp_path / "clusters").mkdir()
    monkeypatch.chdir(tmp_path)
    assert project_folder("clusters", "X_DIR").resolve() == (tmp_path / "clusters").resolve()


def test_installed_copy_when_no_project_or_checkout_has_it(tmp_path, monkeypatch):
    monkeypatch.delenv("X_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    share = tmp_path / "prefix" / "share" / "hpcllm" / "only-installed"
    share.mkdir(parents=True)
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "prefix"))
    assert project_folder("only-installed", "X_DIR") == share

"""The CLI's one exception boundary (hpcllm.cli.boundary): expected failures are one line and exit 2;
a bug is one line naming a crash report that holds the traceback; no bare traceback reaches a user."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

import hpcllm.collect.records
import hpcllm.collect.report
import hpcllm.collect.table  # imported before the patches below, so neither binds a patched `scan` for good
from hpcllm.cli import main
from hpcllm.cli.boundary import EXIT_BUG


def _run(monkeypatch: pytest.MonkeyPatch, *argv: str) -> int:
    monkeypatch.setattr(sys, "argv", ["hpcllm", *argv])
    with pytest.raises(SystemExit) as exc:
        main()
    return int(exc.value.code or 0)


def _boom(root: Path, skipped: list[str] | None = None) -> list:
    raise RuntimeError("boom: an unexpected bug")


def _truncated(root: Path, skipped: list[str] | None = None) -> list:
    raise EOFError("Ran out of input")  # what pickle or numpy say of a file that ends early


# An EOFError too: click would print "Aborted." and exit 1 (its answer to a prompt whose input
# ended), naming nothing; in hpcllm (no prompts) it is a reader's bug like any other.
@pytest.mark.parametrize(("bug", "said"), [(_boom, "RuntimeError: boom"), (_truncated, "EOFError: Ran out of input")])
def test_a_bug_is_one_line_and_a_crash_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], bug: Any, said: str
) -> None:
    monkeypatch.setenv("HPCLLM_CRASH_DIR", str(tmp_path / "crashes"))
    monkeypatch.delenv("HPCLLM_DEBUG", raising=False)
    monkeypatch.setattr(hpcllm.collect.records, "scan", bug)
    (tmp_path / "results").mkdir()
    assert _run(monkeypatch, "collect", "-r", str(tmp_path / "results")) == EXIT_BUG
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "internal error" in lines[0] and said.split(": ")[1] in lines[0], err
    (report,) = (tmp_path / "crashes").iterdir()
    assert str(report) in err.replace("\n", "")
    text = report.read_text()
    assert "Traceback" in text and said in text and "collect" in text


def test_debug_prints_the_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HPCLLM_CRASH_DIR", str(tmp_path / "crashes"))
    monkeypatch.setenv("HPCLLM_DEBUG", "1")
    monkeypatch.setattr(hpcllm.collect.records, "scan", _boom)
    (tmp_path / "results").mkdir()
    assert _run(monkeypatch, "collect", "-r", str(tmp_path / "results")) == EXIT_BUG
    assert "Traceback" in capsys.readouterr().err


def _disk_full(root: Path, skipped: list[str] | None = None) -> list:
    raise OSError(28, "No space left on device")


def test_an_expected_failure_is_one_line_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HPCLLM_CRASH_DIR", str(tmp_path / "crashes"))
    monkeypatch.setattr(hpcllm.collect.records, "scan", _disk_full)
    (tmp_path / "results").mkdir()
    assert _run(monkeypatch, "collect", "-r", str(tmp_path / "results")) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "No space left on device" in lines[0], err
    assert not (tmp_path / "crashes").exists()


def test_a_missing_results_root_is_one_error_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for command in ("collect", "status", "report"):
        assert _run(monkeypatch, command, "-r", str(tmp_path / "nope")) == 2
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and "no such folder" in lines[0], (command, err)
    (tmp_path / "file").write_text("x")
    assert _run(monkeypatch, "status", "-r", str(tmp_path / "file")) == 2
    assert "not a folder" in capsys.readouterr().err


def test_a_results_root_that_is_a_file_is_named_by_every_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], in_project: Path
) -> None:
    """Not "explore-batch.json: not a probe index ... rerun explore-batch" about a file that cannot exist:
    the one resolver of the results root says the root (or the file above it) is no folder."""
    (tmp_path / "file").write_text("x")
    for root, blamed in ((tmp_path / "file", "is not a folder"), (tmp_path / "file" / "sub", "cannot be made")):
        for command in (["submit", "--dry-run"], ["plan"], ["explore-batch", "--dry-run"]):
            argv = [command[0], "experiments/smoke.yaml", "--cluster", "local", "-r", str(root), *command[1:]]
            assert _run(monkeypatch, *argv) == 2, command
            err = capsys.readouterr().err
            assert f"the results root {blamed}" in err and "probe index" not in err, (command, err)
    assert (tmp_path / "file").read_text() == "x"


def _options() -> list[tuple[str, Any]]:
    """(command path, parameter) for every parameter of every command."""
    import typer

    from hpcllm.cli import app

    found: list[tuple[str, Any]] = []

    def walk(command: Any, path: str) -> None:
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, f"{path} {name}".strip())
        if not hasattr(command, "commands"):
            found.extend((path, param) for param in command.params)

    walk(typer.main.get_command(app), "")
    return found


def test_every_numeric_option_is_range_checked_by_the_cli() -> None:
    """An int beyond 64 bits passed `generate --seed` and crashed torch's manual_seed; a float option
    without the ``finite`` callback took ``nan``, which every range comparison lets through."""
    from hpcllm.cli.common import finite, int64

    unbounded = []
    for path, param in _options():
        kind = param.type_descriptor.annotation
        if kind in (int, int | None):
            ranged = param.min is not None and param.max is not None and int64(param.min) == param.min
            if getattr(param.callback, "__wrapped__", None) is not int64 and not (ranged and int64(param.max)):
                unbounded.append(f"{path} --{param.name}: int without callback=int64 or a min and max")
        elif kind in (float, float | None) and getattr(param.callback, "__wrapped__", None) is not finite:
            unbounded.append(f"{path} --{param.name}: float without callback=finite")
    assert unbounded == []


def test_a_seed_beyond_64_bits_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert _run(monkeypatch, "generate", str(tmp_path), "-p", "x", "--seed", str(2**64)) == 2
    assert "--seed" in capsys.readouterr().err


@pytest.mark.timeout(60)  # a FIFO profile made `clusters show` wait for a writer forever
def test_one_bad_profile_is_one_warning_and_the_others_are_listed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import os
    import shutil

    folder = tmp_path / "clusters"
    folder.mkdir()
    shutil.copy(Path(__file__).resolve().parents[1] / "clusters" / "local.yaml", folder)
    os.mkfifo(folder / "fifo.yaml")
    (folder / "loop.yaml").symlink_to("loop.yaml")
    (folder / "big.yaml").write_text("name: big\ngpus_per_node: 99999999999999999999\n")
    monkeypatch.setenv("HPCLLM_CLUSTERS_DIR", str(folder))
    assert _run(monkeypatch, "clusters") == 0
    out, err = capsys.readouterr()
    assert "local" in out
    for name, why in (("fifo", "is a FIFO"), ("loop", "symbolic link loop"), ("big", "out of range")):
        (line,) = [line for line in err.splitlines() if f"{name}.yaml" in line]
        assert why in line, err
    assert _run(monkeypatch, "clusters", "show", "fifo") == 2
    assert "is a FIFO" in capsys.readouterr().err

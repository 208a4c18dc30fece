"""Every listing at 80 and 120 columns on a terminal, and piped: no line wider than the terminal, no
id or path folded or cut, and everything whole in a pipe.

The commands run as subprocesses: rich reads the terminal's width and whether it is one when the
console is made, so each width needs its own process (``TTY_COMPATIBLE=1`` makes a pipe a terminal).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from collect_support import engine_summary, loss_curve, write_run

from hpcllm.cli.listing import layout, table_width
from hpcllm.launch.manifest import RunState

ROOT = Path(__file__).resolve().parents[1]
LONG_ID = "2.7b-n64x4-mbs2-ga1-hs-acselective-compile-seq8192-0123abcd"
FAILED_ID = "tiny-n1x2-mbs8-ga1-ns-acnone-seq128-7f6b8a00"
REASON = "engine exited with code 1 (summary status: failed); see slurm-4242.out"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _run(args: list[str], columns: int | None, cwd: Path = ROOT) -> str:
    """The command's stdout; a terminal of ``columns`` columns, or a pipe when None."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "TTY_COMPATIBLE", "FORCE_COLOR")}
    env["NO_COLOR"] = "1"
    if columns is not None:
        env.update(COLUMNS=str(columns), TTY_COMPATIBLE="1")
    else:
        env["COLUMNS"] = "80"  # a pipe at the default width must still get whole lines
    proc = subprocess.run(
        [sys.executable, "-c", "from hpcllm.cli import main; main()", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
    )
    assert proc.returncode == 0, proc.stderr
    return ANSI.sub("", proc.stdout)


def _widest(text: str) -> int:
    return max(len(line.rstrip()) for line in text.splitlines())


@pytest.fixture
def results(tmp_path: Path) -> Path:
    write_run(tmp_path, LONG_ID, summary=engine_summary(), metrics=loss_curve(60))
    write_run(tmp_path, FAILED_ID, state=RunState.FAILED, reason=REASON, restarts=1)
    write_run(tmp_path, "tiny-n1x1-mbs8-ga1-fs-acnone-seq128-332ada07", state=RunState.CANCELLED, experiment="tut")
    return tmp_path


@pytest.mark.parametrize("columns", [80, 120])
def test_status_fits_the_terminal_and_keeps_ids_whole(results, columns):
    out = _run(["status", "-r", str(results)], columns)
    assert _widest(out) <= columns, out
    assert LONG_ID in out and FAILED_ID in out and "…" not in out
    assert "cluster leonardo" in out  # one value for every row: said once, in the title
    if columns == 80:
        assert "not shown at 80 columns:" in out and "reason" in out.split("not shown", 1)[1]
    else:  # the reason wraps at spaces only, and "experiment" is a header, not a letter a line
        assert "engine exited" in out and "slurm-4242.out" in out
        assert re.search(r"^\s*exp\s+run\s+state\s+job", out, re.M), out


def test_status_piped_is_whole(results):
    out = _run(["status", "-r", str(results)], None)
    assert REASON in out and LONG_ID in out and "leonardo" in out and "not shown" not in out


@pytest.mark.parametrize("columns", [80, 120, None])
def test_clusters_names_whole(columns):
    out = _run(["clusters"], columns)
    names = [line.split()[0] for line in out.splitlines()[2:] if line.strip() and not line.startswith(("─", " "))]
    assert {"leonardo", "local", "localslurm", "marenostrum5"} <= set(names), out
    assert "…" not in out
    if columns is not None:
        assert _widest(out) <= columns, out
    else:  # piped: every column, every QoS whole on one line
        assert "boost_qos_dbg (00:30:00), boost_qos_lprod" in out and "cores/node" in out


@pytest.mark.parametrize("columns", [80, 120, None])
def test_explore_batch_ids_whole(tmp_path, columns):
    out = _run(
        ["explore-batch", "experiments/scaling_2.7b.yaml", "-c", "leonardo", "--dry-run", "--results", str(tmp_path)],
        columns,
    )
    probes = sorted(p.name for p in (tmp_path / "scaling_2.7b" / "leonardo").iterdir() if p.is_dir())
    assert probes and all(probe in out for probe in probes), out
    if columns is not None:
        assert _widest(out.split("then:", 1)[0]) <= columns, out


@pytest.mark.parametrize("columns", [60, 80])
def test_logs_path_on_one_line(tmp_path, columns):
    run = write_run(tmp_path / ("deep-" * 8), FAILED_ID, state=RunState.FAILED, log="line one\nline two\n")
    out = _run(["logs", FAILED_ID, "--results", str(tmp_path / ("deep-" * 8))], columns)
    log = next(run.path.glob("slurm-*.out"))
    assert f"==> {log} <==" in out.splitlines()[0]


def test_layout_drops_whole_columns_and_never_folds():
    headers = ("experiment", "cluster", "run", "state", "job", "reason")
    rows = [["exp", "leo", LONG_ID, "completed", "1", ""], ["exp2", "leo", FAILED_ID, "failed", "2", REASON]]
    fitted = layout(80, headers, rows, keep_whole=("run", "state", "job"), wrap=("reason",), common=("cluster",))
    assert fitted is not None and fitted.width <= 80
    assert [headers[i] for i in fitted.kept] == ["run", "state", "job"]
    assert fitted.title_extra == "cluster leo" and set(fitted.hidden) == {"experiment", "reason"}
    wide = layout(140, headers, rows, keep_whole=("run", "state", "job"), wrap=("reason",))
    assert wide is not None and wide.hidden == [] and wide.width <= 140
    reason_width = wide.widths[wide.kept.index(5)]
    assert reason_width >= len("slurm-4242.out")  # the longest word of the free text fits on a line
    assert layout(40, headers, rows, keep_whole=("run", "state")) is None  # then: plain text
    assert table_width([10, 5]) == 18


def test_an_empty_column_gives_way_first():
    rows = [[LONG_ID, "completed", "", "60"], [FAILED_ID, "completed", "", "60"]]
    fitted = layout(80, ("run", "state", "reason", "step"), rows, keep_whole=("run", "state"), wrap=("reason",))
    assert fitted is not None and fitted.hidden == ["reason"] and fitted.kept == [0, 1, 3]

"""``submit`` and ``status`` in pipes and logs: run ids and states whole, counts, JSON for scripts."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from cli_support import submit_dry_run
from collect_support import engine_summary, loss_curve, write_run
from rich.console import Console
from typer.testing import CliRunner

from hpcllm.cli import app
from hpcllm.cli.listing import RICH_MAX_ROWS, print_listing
from hpcllm.launch.manifest import RunState

runner = CliRunner()
LONG_ID = "2.7b-n64x4-mbs2-ga1-hs-acselective-compile-seq8192-0123abcd"


@pytest.fixture
def results(tmp_path: Path) -> Path:
    write_run(tmp_path, LONG_ID, summary=engine_summary(), metrics=loss_curve(60))
    write_run(
        tmp_path,
        "tiny-n1x2-mbs8-ga1-ns-acnone-seq128-7f6b8a00",
        state=RunState.FAILED,
        reason="engine exited with code 1",
        restarts=1,
    )
    write_run(tmp_path, "tiny-n1x1-mbs8-ga1-fs-acnone-seq128-332ada07", state=RunState.CANCELLED)
    return tmp_path


def test_status_in_a_pipe_keeps_ids_and_states_whole(results):
    """A subprocess writing to a pipe at the default 80 columns, as in a log or `| grep`."""
    proc = subprocess.run(
        [sys.executable, "-c", "from hpcllm.cli import main; main()", "status", "-r", str(results)],
        capture_output=True,
        text=True,
        env={"COLUMNS": "80", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    row = next(line for line in lines if LONG_ID in line)
    assert row.split()[2:6] == [LONG_ID, "completed", "4242", "60"]
    assert ["tiny-n1x2-mbs8-ga1-ns-acnone-seq128-7f6b8a00", "failed"] in [line.split()[2:4] for line in lines]
    assert "…" not in proc.stdout and "│" not in proc.stdout  # nothing cut, no box drawing in logs
    assert lines[-1] == "3 runs: 1 cancelled, 1 completed, 1 failed"


def test_status_json_for_scripts(results):
    result = runner.invoke(app, ["status", "-r", str(results), "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = {r["run_id"]: r for r in json.loads(result.output)}
    assert rows[LONG_ID]["state"] == "completed" and rows[LONG_ID]["step"] == 60
    failed = rows["tiny-n1x2-mbs8-ga1-ns-acnone-seq128-7f6b8a00"]
    assert (failed["state"], failed["restarts"], failed["reason"]) == ("failed", 1, "engine exited with code 1")
    assert failed["experiment"] == "exp" and failed["cluster"] == "leonardo" and failed["job_id"] == "4242"


def test_submit_dry_run_in_a_pipe_keeps_run_ids_whole(in_project, tmp_path):
    result = submit_dry_run(tmp_path, columns=80)
    assert result.exit_code == 0, result.output
    run_ids = sorted(p.name for p in (tmp_path / "scaling_2.7b" / "leonardo").iterdir() if p.is_dir())
    listed = [line.split()[0] for line in result.output.splitlines() if line.startswith("2.7b-")]
    assert sorted(listed) == run_ids and all(len(r) > 40 for r in run_ids)


def test_a_terminal_gets_a_table_that_does_not_cut_ids():
    console = Console(width=80, force_terminal=True, record=True)
    print_listing(
        console, "t", ("run", "state", "reason"), [[LONG_ID, "completed", "x " * 60]], keep_whole=("run", "state")
    )
    text = console.export_text()
    assert LONG_ID in text and "completed" in text and "───" in text and "not shown at 80 columns: reason" in text


def test_long_listings_on_a_terminal_are_plain_text():
    out = io.StringIO()
    console = Console(file=out, width=80, force_terminal=True)
    rows = [[f"run-{i:05d}", "completed"] for i in range(RICH_MAX_ROWS + 1)]
    print_listing(console, "t", ("run", "state"), rows, keep_whole=("run",))
    text = out.getvalue()
    assert "│" not in text and text.splitlines()[-1] == f"run-{RICH_MAX_ROWS:05d}  completed"


@pytest.mark.parametrize(
    "command",
    [["status"], ["collect", "--compare", "seed"], ["report", "-o", "r.html"]],
    ids=["status", "collect", "report"],
)
def test_login_node_commands_do_not_import_torch(results, tmp_path, command):
    code = (
        "import sys\nfrom hpcllm.cli import app\n"
        "try:\n    app(sys.argv[1:])\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, command[0], "-r", str(results), *command[1:]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr


def test_status_reads_the_last_training_line_of_any_length(tmp_path):
    """The tail window grows until it holds a whole line; evaluation lines (no loss) are skipped."""
    from hpcllm.launch.progress import last_metrics

    run = write_run(tmp_path, "r", metrics=[*loss_curve(3), {"step": 3, "eval_loss": 2.5}])
    assert last_metrics(run)["step"] == 3 and "loss" in last_metrics(run)
    long_line = {"step": 4, "loss": 1.0, "note": "x" * 10_000}  # longer than the first 4 KiB window
    run.metrics.write_text(run.metrics.read_text() + json.dumps(long_line) + "\n")
    assert last_metrics(run)["note"] == "x" * 10_000

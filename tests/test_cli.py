"""The CLI: each command answers, none of the login-node ones imports torch."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cli_support import submit_dry_run
from collect_support import table_summary
from typer.testing import CliRunner

from hpcllm.cli import app
from hpcllm.collect.table import COLUMNS

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def test_help_does_not_import_torch():
    code = (
        "import sys; from typer.testing import CliRunner; from hpcllm.cli import app; "
        "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output; "
        "r = CliRunner().invoke(app, ['clusters']); assert r.exit_code == 0, r.output; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and "hpcllm" in result.output


def test_clusters_table_and_show(in_project):
    result = runner.invoke(app, ["clusters"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for name in ("leonardo", "marenostrum5", "local", "boost_usr_prod"):
        assert name in result.output
    result = runner.invoke(app, ["clusters", "show", "leonardo"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "A100" in result.output and "boost_qos_dbg" in result.output
    result = runner.invoke(app, ["clusters", "show", "nowhere"])
    assert result.exit_code == 2 and "no cluster profile 'nowhere'" in result.output


@pytest.mark.parametrize("kind,key", [("cluster", "gpus_per_node"), ("experiment", "grid"), ("training", "parallel")])
def test_schema(kind, key):
    result = runner.invoke(app, ["schema", kind])
    assert result.exit_code == 0
    schema = json.loads(result.output)
    assert key in schema["properties"]


def test_show_completion_is_available(monkeypatch):
    # typer finds the shell among the parent processes (shellingham); a test started detached
    # (nohup, setsid) has none, so the shell is given.
    monkeypatch.setattr("typer.completion._get_shell_name", lambda: "bash")
    result = runner.invoke(app, ["--show-completion"])
    assert result.exit_code == 0 and "complete" in result.output.lower()


def test_dry_run_renders_every_point(in_project, tmp_path):
    result = submit_dry_run(tmp_path, columns=250)
    assert result.exit_code == 0, result.output
    runs = sorted(p for p in (tmp_path / "scaling_2.7b" / "leonardo").iterdir() if p.is_dir())  # not .submit.lock
    assert len(runs) == 18
    for run in runs:
        assert {"job.sbatch", "run.yaml", "manifest.json"} <= {p.name for p in run.iterdir()}
        assert json.loads((run / "manifest.json").read_text())["state"] == "rendered"
    assert "no account" in result.output  # warned, not failed, in a dry run


def test_submit_without_sbatch_fails_clearly(in_project, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    result = runner.invoke(
        app, ["submit", "experiments/smoke.yaml", "--cluster", "leonardo", "-A", "x", "--results", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert "`sbatch` is not on PATH" in result.output


def test_submit_without_account_fails_clearly(in_project, tmp_path):
    result = runner.invoke(
        app, ["submit", "experiments/smoke.yaml", "--cluster", "leonardo", "--results", str(tmp_path)]
    )
    assert result.exit_code == 2 and "needs an account" in result.output


def _fake_run(root: Path, name: str, **overrides) -> Path:
    """A completed run directory as the engine leaves it (summary.json + run.yaml)."""
    run = root / "exp" / "cl" / name
    run.mkdir(parents=True)
    (run / "run.yaml").write_text("run_id: x\n")
    summary = table_summary(**{"ac_every": 2, **overrides})
    (run / "summary.json").write_text(json.dumps(summary))
    return run


def test_collect_formats(tmp_path):
    _fake_run(tmp_path, "a")
    _fake_run(tmp_path, "b", world_size=16, samples_per_s=36.9, global_batch_size=32, activation_checkpointing="full")
    _fake_run(tmp_path, "c", status="failed")
    _fake_run(tmp_path, "d", world_size=2, gpu_type="cpu", mfu=None)
    md = runner.invoke(app, ["collect", "-r", str(tmp_path), "--format", "markdown", "--columns", "seed"])
    assert md.exit_code == 0
    lines = md.output.strip().splitlines()
    assert lines[0] == "| " + " | ".join(COLUMNS) + " |"
    assert lines[0] == (
        "| # Params (B) | #GPUs | Samples/s | GradAccm | MBS | GBS | Sequence Length | Precision "
        "| Sharding | AC | GPU Type | MFU |"
    )
    assert len(lines) == 2 + 3  # header, rule, three completed runs
    assert "| 2.8 | 8 | 18.63 | 1 | 2 | 16 | 4096 | BF_16 | FULL_SHARD | False | A100 | 0.5847 |" in lines
    assert "| 2.8 | 16 | 36.9 | 1 | 2 | 32 | 4096 | BF_16 | FULL_SHARD | True | A100 | 0.5847 |" in lines
    assert lines[2].endswith("| cpu |  |")  # no MFU on CPU: an empty cell, never a made-up number
    csv = runner.invoke(app, ["collect", "-r", str(tmp_path), "--format", "csv", "--columns", "seed"])
    assert csv.output.splitlines()[0] == ",".join(COLUMNS)
    js = runner.invoke(app, ["collect", "-r", str(tmp_path), "--format", "json", "--columns", "seed"])
    rows = json.loads(js.output)
    assert len(rows) == 3 and set(rows[0]) == set(COLUMNS)
    out = tmp_path / "t.md"
    assert (
        runner.invoke(
            app,
            [
                "collect",
                "-r",
                str(tmp_path),
                "--columns",
                "seed",
                "--output",
                str(out),
                "--plot",
                str(tmp_path / "p.png"),
            ],
        ).exit_code
        == 0
    )
    assert out.read_text().splitlines()[0] == lines[0]
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_collect_missing_folder(tmp_path):
    result = runner.invoke(app, ["collect", "-r", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "no such folder" in result.output


def _verdicts(output: str) -> dict[str, list[str]]:
    """The reference listing of `collect --check`: run -> [metric, measured, reference, bounds, verdict]
    (cells cut at the header's column starts; the `source` column is left out)."""
    lines = output.splitlines()
    top = next(i for i, line in enumerate(lines) if line.split()[:2] == ["run", "metric"])
    names = lines[top].split()
    starts = [lines[top].index(name) for name in names]
    rows = {}
    for line in lines[top + 1 :]:
        if not line.strip():
            break
        cells = [line[start:end].strip() for start, end in zip(starts, [*starts[1:], None], strict=True)]
        rows[cells[0]] = [cell for name, cell in zip(names[1:], cells[1:], strict=True) if name != "source"]
    return rows


def test_collect_check_flags_runs_out_of_bounds(tmp_path):
    # Run names that cannot be mistaken for a verdict in the output.
    inside = _fake_run(tmp_path, "run-inside", mfu=0.56)
    below = _fake_run(tmp_path, "run-below", mfu=0.40, world_size=16)
    for run in (inside, below):
        (run / "manifest.json").write_text(
            json.dumps({"expected": {"mfu": {"value": 0.55, "lower": -0.1, "upper": None}}})
        )
    result = runner.invoke(app, ["collect", "-r", str(tmp_path), "--check"], env={"COLUMNS": "200"})
    assert result.exit_code == 1
    # mfu >= 0.55 x (1 - 0.1) = 0.495, no upper bound: 0.56 passes, 0.40 does not.
    assert _verdicts(result.output) == {
        "run-inside": ["mfu", "0.56", "0.55", "[0.495, inf]", "ok"],
        "run-below": ["mfu", "0.4", "0.55", "[0.495, inf]", "FAIL"],
    }
    (below / "summary.json").write_text((below / "summary.json").read_text().replace('"mfu": 0.4', '"mfu": 0.5'))
    result = runner.invoke(app, ["collect", "-r", str(tmp_path), "--check"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert [v[-1] for v in _verdicts(result.output).values()] == ["ok", "ok"]


def test_experiment_references_reach_the_manifest(in_project, tmp_path):
    exp = tmp_path / "e.yaml"
    exp.write_text(
        "name: e\ntraining: {model: {preset: tiny}, data: {path: data/demo}}\n"
        "expected: {leonardo: {mfu: [0.5, -0.1, null]}, local: {samples_per_s: [100, -0.5, 1.0]}}\n"
    )
    result = runner.invoke(
        app, ["submit", str(exp), "--cluster", "leonardo", "--dry-run", "--results", str(tmp_path / "r")]
    )
    assert result.exit_code == 0, result.output
    (manifest,) = (tmp_path / "r").rglob("manifest.json")
    assert json.loads(manifest.read_text())["expected"] == {"mfu": {"value": 0.5, "lower": -0.1, "upper": None}}
    exp.write_text(exp.read_text().replace("mfu:", "mfuu:"))
    bad = runner.invoke(
        app, ["submit", str(exp), "--cluster", "leonardo", "--dry-run", "--results", str(tmp_path / "r")]
    )
    assert bad.exit_code == 2 and "expected.leonardo.mfuu: not a checkable metric" in bad.output


def test_collect_keeps_a_run_without_measured_steps(tmp_path):
    """A run resumed exactly at its last step measured nothing: an empty cell, not a crash."""
    _fake_run(tmp_path, "a", samples_per_s=None, mfu=None)
    result = runner.invoke(app, ["collect", "-r", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "| 2.8 | 8 |  | 1 | 2 | 16 |" in result.output


def test_collect_skips_broken_summaries_and_says_so(tmp_path):
    _fake_run(tmp_path, "good")
    bad = _fake_run(tmp_path, "bad")
    summary = json.loads((bad / "summary.json").read_text())
    del summary["world_size"]
    (bad / "summary.json").write_text(json.dumps(summary))
    torn = _fake_run(tmp_path, "torn")
    (torn / "summary.json").write_text('{"status": "compl')
    result = runner.invoke(app, ["collect", "-r", str(tmp_path), "--format", "csv"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert "missing or bad field 'world_size'" in result.output and "not valid JSON" in result.output
    assert result.output.count("FULL_SHARD") == 1


def test_status_names_a_damaged_manifest(tmp_path):
    """One warning line for the damaged run; the others are still listed (issue 18)."""
    run = _fake_run(tmp_path, "a")
    _fake_run(tmp_path, "b")
    (run / "manifest.json").write_text('{"run_id": "a", "state": "runn')
    result = runner.invoke(app, ["status", "-r", str(tmp_path)], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert result.output.count("manifest.json: not a valid manifest") == 1 and "Traceback" not in result.output
    assert "2 runs:" in result.output

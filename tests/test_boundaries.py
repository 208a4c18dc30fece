"""The boundaries of issue 18, case by case where a property test would say less: the run-file reader,
run ids, containment of names, path spellings, strict machine output, values refused at load."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import yaml
from collect_support import table_summary
from typer.testing import CliRunner

from hpcllm import runfiles
from hpcllm.cli import app
from hpcllm.config.cluster import load_cluster
from hpcllm.config.experiment import load_experiment
from hpcllm.errors import ConfigError, HpcllmError
from hpcllm.launch.runids import resolve_run_id
from hpcllm.plan.expand import expand_experiment
from hpcllm.rundir import RunDir, contained

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()

SUMMARY = table_summary()


def _run(root: Path, name: str, summary: dict | None = None, manifest: dict | None = None) -> Path:
    run = root / "exp" / "cl" / name
    run.mkdir(parents=True)
    (run / "run.yaml").write_text("run_id: x\n")
    if summary is not None:
        (run / "summary.json").write_text(json.dumps(summary))
    if manifest is not None:
        (run / "manifest.json").write_text(json.dumps(manifest))
    return run


# --- the reader ----------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_reader_refuses_special_files_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(runfiles.RunFileProblem, match="a FIFO"):
        runfiles.read_json(fifo)
    with pytest.raises(runfiles.RunFileProblem, match="a FIFO"):
        list(runfiles.iter_json_lines(fifo))
    sock_path = tmp_path / "sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(sock_path))
        with pytest.raises(runfiles.RunFileProblem, match="socket"):
            runfiles.read_bytes(sock_path)
    with pytest.raises(runfiles.RunFileProblem, match="character device"):
        runfiles.read_bytes("/dev/zero")
    (tmp_path / "loop").symlink_to("loop")
    with pytest.raises(runfiles.RunFileProblem, match="symbolic link loop"):
        runfiles.read_bytes(tmp_path / "loop")
    with pytest.raises(runfiles.RunFileProblem, match="directory"):
        runfiles.read_bytes(tmp_path)
    with pytest.raises(runfiles.MissingFile):
        runfiles.read_bytes(tmp_path / "absent")


def test_reader_is_bounded_and_streams(tmp_path: Path) -> None:
    big = tmp_path / "big.json"
    big.write_bytes(b" " * 1000 + b"{}")
    with pytest.raises(runfiles.RunFileProblem, match="more than the 100"):
        runfiles.read_bytes(big, limit=100)
    lines = tmp_path / "m.jsonl"
    lines.write_bytes(b'{"step": 1}\n' + b'{"x": "' + b"a" * 5000 + b'"}\n{"step": 2}\n{"step": 3')
    # the overlong line is skipped unread, the torn last line (no newline yet: being written) too
    assert [r["step"] for r in runfiles.iter_json_lines(lines, max_line=1000)] == [1, 2]
    assert runfiles.last_json_line(lines) == {"step": 2}
    bad = tmp_path / "bad.json"
    bad.write_bytes(b"\xff{}")
    with pytest.raises(runfiles.RunFileProblem, match=r"not UTF-8|not valid JSON"):
        runfiles.read_json(bad)
    bad.write_text("[1]")
    with pytest.raises(runfiles.RunFileProblem, match="holds a JSON array, not an object"):
        runfiles.read_json_object(bad)


def test_strict_json_never_writes_nan() -> None:
    text = runfiles.strict_json([{"MFU": float("nan"), "Loss": float("-inf"), "GPUs": 8}])
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f"wrote {c}"))
    assert data == [{"MFU": None, "Loss": None, "GPUs": 8, "non_finite": {"MFU": "nan", "Loss": "-inf"}}]


# --- machine output ------------------------------------------------------------------------------


def test_collect_json_is_strict_and_markdown_cells_cannot_add_columns(tmp_path: Path) -> None:
    _run(tmp_path, "a", {**SUMMARY, "mfu": float("nan"), "gpu_type": "A|B\nC"})
    result = runner.invoke(app, ["collect", str(tmp_path), "-f", "json", "--columns", "seed"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout, parse_constant=lambda c: pytest.fail(f"wrote {c}"))
    assert row["MFU"] is None and row["non_finite"] == {"MFU": "nan"}
    md = runner.invoke(app, ["collect", str(tmp_path), "-f", "markdown", "--columns", "seed"])
    header, _, line = md.stdout.strip().splitlines()
    assert line.replace("\\|", "").count("|") == header.count("|")


def test_text_from_files_is_never_markup(tmp_path: Path) -> None:
    """A run folder named like rich markup (a closing tag alone would make rich raise) prints as it is."""
    _run(tmp_path, "[/oops]", manifest={"bad": "manifest"})
    _run(tmp_path, "[red]r", {**SUMMARY})
    result = runner.invoke(app, ["status", str(tmp_path)], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert "[/oops]" in result.stderr and "[red]r" in result.stdout
    assert runner.invoke(app, ["collect", str(tmp_path)]).exit_code == 0


# --- run ids -------------------------------------------------------------------------------------


def test_an_empty_or_ambiguous_run_id_names_nothing(tmp_path: Path) -> None:
    for name in ("gpt-a1", "gpt-a2", "other"):
        _run(tmp_path, name)
    for empty in ("", " ", "\t"):
        with pytest.raises(HpcllmError, match=r"names no run.*runs there:.*gpt-a1"):
            resolve_run_id(tmp_path, empty)
    with pytest.raises(HpcllmError, match=r"matches 2 runs.*gpt-a1.*gpt-a2"):
        resolve_run_id(tmp_path, "gpt-a")
    assert resolve_run_id(tmp_path, "oth").run_id == "other"
    assert resolve_run_id(tmp_path, "gpt-a1").run_id == "gpt-a1"
    with pytest.raises(HpcllmError, match=r"no run 'zzz'.*runs there"):
        resolve_run_id(tmp_path, "zzz")
    for command in ("cancel", "logs"):
        result = runner.invoke(app, [command, "", "--results", str(tmp_path)])
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1 and "names no run" in lines[0], result.output


# --- containment ---------------------------------------------------------------------------------


def test_names_and_paths_stay_inside_their_root(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"run id '\.\./x'"):
        RunDir.of(tmp_path, "exp", "cl", "../x")
    with pytest.raises(ConfigError, match=r"experiment name '\.\.'"):
        RunDir.of(tmp_path, "..", "cl", "r")
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "out").symlink_to(tmp_path)
    with pytest.raises(ConfigError, match="leads outside"):
        contained(tmp_path / "root", "out/x", "pointer")
    with pytest.raises(ConfigError, match="leads outside"):
        contained(tmp_path / "root", "../root2", "pointer")
    assert contained(tmp_path / "root", "a/../b", "pointer") == tmp_path / "root" / "a/../b"


def test_an_account_cannot_move_run_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # a regression renders under ./results: here, not in the checkout
    profile = yaml.safe_load((ROOT / "clusters" / "leonardo.yaml").read_text())
    profile["paths"] = {"results": str(tmp_path / "proj" / "{account}" / "results")}
    clusters = tmp_path / "clusters"
    clusters.mkdir()
    (clusters / "leonardo.yaml").write_text(yaml.safe_dump(profile))
    monkeypatch.setenv("HPCLLM_CLUSTERS_DIR", str(clusters))
    monkeypatch.delenv("HPCLLM_RESULTS", raising=False)
    exp = tmp_path / "exp.yaml"
    exp.write_text((ROOT / "experiments" / "smoke.yaml").read_text())
    for account in ("../x", "..", "a/b"):
        result = runner.invoke(app, ["submit", str(exp), "--cluster", "leonardo", "-A", account, "--dry-run"])
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1, result.output
        assert "account" in lines[0] and "not a usable name" in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clusters", "exp.yaml"]


def test_two_spellings_of_a_path_are_one_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cluster = load_cluster(str(ROOT / "clusters" / "local.yaml"))
    base = yaml.safe_load((ROOT / "experiments" / "smoke.yaml").read_text())
    ids = []
    for spelling in ("data/demo", "./data//demo/", str(tmp_path / "data" / "." / "demo")):
        base["training"]["data"]["path"] = spelling
        (tmp_path / "e.yaml").write_text(yaml.safe_dump(base))
        ids.append({s.run_id for s in expand_experiment(load_experiment(tmp_path / "e.yaml"), cluster, "e.yaml")})
    assert ids[0] == ids[1] == ids[2]


# --- values --------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["inf", "-Infinity", "nan", ".inf"])
def test_a_non_finite_value_is_refused_at_load(tmp_path: Path, value: str) -> None:
    base = yaml.safe_load((ROOT / "experiments" / "smoke.yaml").read_text())
    base["training"]["optim"]["lr"] = value
    (tmp_path / "e.yaml").write_text(yaml.safe_dump(base))
    cluster = load_cluster(str(ROOT / "clusters" / "local.yaml"))
    with pytest.raises(ConfigError, match=r"optim\.lr: Input should be a (finite|valid) number"):
        expand_experiment(load_experiment(tmp_path / "e.yaml"), cluster, "e.yaml")
    base["training"]["optim"]["lr"] = 1e-3
    base["grid"] = {"optim.lr": [1e-3, value]}
    base.pop("where")
    (tmp_path / "e.yaml").write_text(yaml.safe_dump(base))
    with pytest.raises(ConfigError, match=r"optim\.lr"):
        expand_experiment(load_experiment(tmp_path / "e.yaml"), cluster, "e.yaml")


def test_more_ranks_per_node_than_gpus_is_refused(tmp_path: Path) -> None:
    base = yaml.safe_load((ROOT / "experiments" / "smoke.yaml").read_text())
    base["grid"] = {"resources.gpus_per_node": [4, 8]}
    base.pop("where")
    (tmp_path / "e.yaml").write_text(yaml.safe_dump(base))
    cluster = load_cluster(str(ROOT / "clusters" / "leonardo.yaml"))  # 4 GPUs per node
    with pytest.raises(ConfigError, match=r"gpus_per_node: 8 ranks per node, but a node .* has 4 GPUs"):
        expand_experiment(load_experiment(tmp_path / "e.yaml"), cluster, "e.yaml", account="proj")


def test_numeric_options_are_range_checked() -> None:
    for args in (
        ["logs", "x", "-n", "-1"],
        ["generate", "x", "--temperature", "inf"],
        ["generate", "x", "--top-p", "nan"],
        ["ckpt", "export", "x", "-o", "y", "--step", "-3"],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)


@pytest.mark.timeout(60)
def test_every_json_read_of_fsutil_is_bounded_and_never_blocks(tmp_path: Path) -> None:
    from hpcllm.fsutil import read_json

    os.mkfifo(tmp_path / "state.json")
    with pytest.raises(ValueError, match=r"state\.json: is a FIFO"):
        read_json(tmp_path / "state.json")
    assert read_json(tmp_path / "absent.json") is None


def test_collect_names_a_damaged_manifest_of_a_reported_run(tmp_path: Path) -> None:
    run = _run(tmp_path, "a", dict(SUMMARY))
    os.mkfifo(run / "manifest.json")
    result = runner.invoke(app, ["collect", str(tmp_path), "-f", "csv", "--columns", "seed,restarts,run"])
    assert result.exit_code == 0 and "a" in result.stdout.splitlines()[1].split(","), result.output
    assert result.stderr.count("manifest.json: is a FIFO") == 1, result.stderr

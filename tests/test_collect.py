"""``hpcllm collect``: columns, filters, sorting, formats, the seed comparison, and run discovery."""

from __future__ import annotations

import csv
import io
import json
import os

import pytest
from collect_support import engine_summary, loss_curve, write_run
from typer.testing import CliRunner

from hpcllm.cli import app
from hpcllm.launch.manifest import RunState
from hpcllm.rundir import find_run_dirs

runner = CliRunner()
WIDE = {"COLUMNS": "400"}


def collect(*args: str):
    result = runner.invoke(app, ["collect", "-r", *map(str, args)], env=WIDE)
    return result


def markdown_rows(output: str) -> list[list[str]]:
    """The header and the data rows of a markdown table (the |---| rule left out)."""
    lines = [line for line in output.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]


@pytest.fixture
def results(tmp_path):
    """Three completed 2.7b runs on Leonardo (8, 16, 32 GPUs; two learning rates), one failed."""
    write_run(tmp_path, "a", summary=engine_summary(), point={"resources.nodes": 2, "optim.lr": 0.001})
    write_run(
        tmp_path,
        "b",
        summary=engine_summary(world_size=16, global_batch_size=32, samples_per_s=36.0, mfu=0.5651, wall_time_s=7322.0),
        point={"resources.nodes": 4, "optim.lr": 0.001},
        restarts=2,
    )
    write_run(
        tmp_path,
        "c",
        summary=engine_summary(world_size=32, global_batch_size=64, samples_per_s=80.5, mfu=0.6317, final_loss=5.5),
        point={"resources.nodes": 8, "optim.lr": 0.002},
    )
    write_run(
        tmp_path,
        "d",
        summary=engine_summary(status="failed"),
        state=RunState.FAILED,
        point={"resources.nodes": 2, "optim.lr": 0.002},
    )
    return tmp_path


def test_default_table_is_the_seeds_columns_then_ours(results):
    result = collect(results)
    assert result.exit_code == 0, result.output
    header, *rows = markdown_rows(result.output)
    assert header == [
        "# Params (B)",
        "#GPUs",
        "Samples/s",
        "GradAccm",
        "MBS",
        "GBS",
        "Sequence Length",
        "Precision",
        "Sharding",
        "AC",
        "GPU Type",
        "MFU",
        "optim.lr",
        "Tokens/J",
        "kWh/B tokens",
        "Energy source",
        "Loss",
        "Restarts",
        "Wall time",
        "Experiment",
        "Cluster",
    ]
    # resources.nodes is swept too, but the seed's #GPUs shows it; optim.lr is not shown otherwise
    assert rows == [
        [
            "2.7",
            "8",
            "18.63",
            "1",
            "2",
            "16",
            "4096",
            "BF_16",
            "FULL_SHARD",
            "False",
            "A100",
            "0.5848",
            "0.001",
            "",
            "",
            "no energy recorded by this run",
            "6.0432",
            "0",
            "1:02:05",
            "exp",
            "leonardo",
        ],
        [
            "2.7",
            "16",
            "36.0",
            "1",
            "2",
            "32",
            "4096",
            "BF_16",
            "FULL_SHARD",
            "False",
            "A100",
            "0.5651",
            "0.001",
            "",
            "",
            "no energy recorded by this run",
            "6.0432",
            "2",
            "2:02:02",
            "exp",
            "leonardo",
        ],
        [
            "2.7",
            "32",
            "80.5",
            "1",
            "2",
            "64",
            "4096",
            "BF_16",
            "FULL_SHARD",
            "False",
            "A100",
            "0.6317",
            "0.002",
            "",
            "",
            "no energy recorded by this run",
            "5.5",
            "0",
            "1:02:05",
            "exp",
            "leonardo",
        ],
    ]


def test_evaluation_loss_shows_when_a_run_has_it(results):
    assert "Eval Loss" not in collect(results).output
    write_run(
        results,
        "e",
        summary=engine_summary(
            world_size=64, global_batch_size=128, samples_per_s=146.0, eval_loss=5.91234, eval_ppl=369.1
        ),
    )
    header, *rows = markdown_rows(collect(results).output)
    assert header[-7:] == ["Loss", "Eval Loss", "Eval PPL", "Restarts", "Wall time", "Experiment", "Cluster"]
    assert [row[-6] for row in rows] == ["", "", "", "5.9123"]


def test_columns_where_and_sort(results):
    result = collect(
        results,
        "--columns",
        "gpus,samples_per_s,mfu_with_head,hfu,restarts,run",
        "--where",
        "gpus >= 16 or optim.lr == 0.002",
        "--sort",
        "-samples_per_s",
    )
    assert result.exit_code == 0, result.output
    header, *rows = markdown_rows(result.output)
    assert header == ["#GPUs", "Samples/s", "MFU+head", "HFU", "Restarts", "Run"]
    assert [row[0] for row in rows] == ["32", "16"]
    assert rows[1][-2:] == ["2", "b"]
    by_summary = collect(results, "--columns", "run,summary.tokens_per_s", "--where", "summary.mem_peak_gib > 40")
    assert markdown_rows(by_summary.output)[0] == ["Run", "tokens_per_s"]


@pytest.mark.parametrize(
    "args,message",
    [
        (["--columns", "gpus,mfuu"], "--columns: unknown column 'mfuu'; use params, gpus"),
        (["--where", "gpuz > 1"], "--where: 'gpuz' is not a column"),
        (["--where", "gpus >"], "where: not an expression"),
        (["--sort", "loss"], "--sort: 'loss' is not a column of this table"),
    ],
)
def test_bad_options_are_one_line_errors(results, args, message):
    result = collect(results, "--columns", "seed", *args) if args[0] == "--sort" else collect(results, *args)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_csv_and_json_keep_raw_values(results):
    rows = list(csv.DictReader(io.StringIO(collect(results, "-f", "csv").output)))
    assert rows[1]["Wall time"] == "7322.0" and rows[1]["Restarts"] == "2" and rows[0]["MFU"] == "0.5848"
    data = json.loads(collect(results, "-f", "json", "--columns", "seed,wall_time").output)
    assert data[0]["Wall time"] == 3725.4 and data[0]["#GPUs"] == 8 and data[0]["AC"] == "False"


def test_latex_is_a_booktabs_table(results):
    tex = collect(results, "-f", "latex", "--columns", "seed").output
    lines = tex.splitlines()
    assert lines[0] == r"\begin{tabular}{rrrrrrrllllr}" and lines[-1] == r"\end{tabular}"
    assert [line for line in lines if "rule" in line] == [r"\toprule", r"\midrule", r"\bottomrule"]
    assert r"\# Params (B) & \#GPUs & Samples/s" in tex  # LaTeX specials escaped
    assert r"2.7 & 8 & 18.63 & 1 & 2 & 16 & 4096 & BF\_16 & FULL\_SHARD & False & A100 & 0.5848 \\" in tex


def test_compare_seed_pairs_runs_with_the_seeds_rows(results):
    """Run a (8 GPUs, MBS 2, FULL_SHARD) is Leonardo's row 1 (18.63 samples/s); b (16 GPUs) is row
    4 (36.96). c (32 GPUs, GBS 64) is row 6; a run on 6 GPUs has no seed row."""
    write_run(results, "f", summary=engine_summary(world_size=6, global_batch_size=12))
    result = collect(results, "--compare", "seed", "-f", "json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output[: result.output.rindex("]") + 1])
    ok = {r["Run"]: r for r in rows if r["Status"] == "ok"}
    assert set(ok) == {"a", "b", "c"}
    assert ok["a"]["Samples/s (seed)"] == 18.63 and ok["a"]["ours/seed"] == 1.0
    assert ok["b"]["Samples/s (seed)"] == 36.96 and ok["b"]["ours/seed"] == round(36.0 / 36.96, 3)
    assert ok["c"]["MFU (seed)"] == 0.5788
    assert sum(r["Status"] == "not run" for r in rows) == 49 - 3
    (extra,) = [r for r in rows if r["Status"] == "not in seed"]
    assert extra["Run"] == "f" and extra["#GPUs"] == 6
    assert "seed rows matched by our runs: 3, seed rows not run: 46, our runs not in the seed: 1" in result.output
    only_ok = collect(results, "--compare", "seed", "--where", "status == 'ok' and gpus > 8")
    assert [r[-1] for r in markdown_rows(only_ok.output)[1:]] == ["b", "c"]


def test_a_different_model_does_not_match_the_seed(results, tmp_path):
    """Same 8-GPU configuration, but 4 layers of the 2.7b preset: another model, no seed row."""
    write_run(tmp_path / "other", "x", summary=engine_summary(n_params=400_000_000))
    rows = markdown_rows(collect(tmp_path / "other", "--compare", "seed", "--where", "status != 'not run'").output)
    assert rows[1][0] == "not in seed"


def test_plots_are_written(results, tmp_path):
    write_run(
        results,
        "g",
        summary=engine_summary(world_size=64, global_batch_size=128, samples_per_s=140.0),
        metrics=loss_curve(40, restart_at=20),
    )
    result = collect(results, "--plot", tmp_path / "s.png", "--loss-plot", tmp_path / "l.png")
    assert result.exit_code == 0, result.output
    for name in ("s.png", "l.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_restarts_are_marked_where_an_attempt_resumed():
    from hpcllm.collect.plot import efficiency, restart_steps

    assert restart_steps(loss_curve(40, restart_at=20)) == [21]
    assert restart_steps(loss_curve(10)) == []
    assert efficiency([{"gpus": 8, "samples_per_s": 16.0}, {"gpus": 32, "samples_per_s": 48.0}]) == [1.0, 0.75]


def test_find_run_dirs_does_not_descend_into_runs(tmp_path):
    a = write_run(tmp_path, "a", summary=engine_summary())
    (a.checkpoints / "step_10").mkdir(parents=True)
    (a.checkpoints / "step_10" / "run.yaml").write_text("not a run\n")  # inside a run: never listed
    write_run(tmp_path, "b", experiment="z", summary=engine_summary())
    os.symlink(tmp_path, tmp_path / "exp" / "loop")  # a link back up must not loop forever
    assert [rd.path for rd in find_run_dirs(tmp_path)] == [
        tmp_path / "exp" / "leonardo" / "a",
        tmp_path / "z" / "leonardo" / "b",
    ]
    assert [rd.run_id for rd in find_run_dirs(a.path)] == ["a"]
    # A listed run (its path kept as the string scandir gave) is the same RunDir as one made from a Path.
    listed = find_run_dirs(tmp_path)[0]
    assert listed == a and hash(listed) == hash(a) and {listed, a} == {a}
    assert (listed.experiment, listed.cluster, listed.run_id) == ("exp", "leonardo", "a")
    assert listed.file("summary.json") == str(a.summary) and os.fspath(listed) == str(a.path)


def test_find_run_dirs_lists_each_run_once_under_its_own_path(tmp_path):
    """Links to folders already in the tree (a `current` or `latest` convenience link, a link to a
    run, a link to `/` like /proc/self/root) add no run twice; a link to a folder outside the tree
    (results kept on another file system) is followed."""
    a = write_run(tmp_path / "root", "a", summary=engine_summary())
    outside = write_run(tmp_path / "elsewhere", "b", experiment="z", summary=engine_summary())
    exp = tmp_path / "root" / "exp"
    os.symlink(exp / "leonardo", exp / "current")  # sorts before the real folder's name
    os.symlink(a.path, tmp_path / "root" / "a-link")
    os.symlink("/", exp / "everything")
    os.symlink(outside.path.parent.parent, tmp_path / "root" / "z")
    assert [str(rd.path) for rd in find_run_dirs(tmp_path / "root")] == [
        str(a.path),
        str(tmp_path / "root" / "z" / "leonardo" / "b"),
    ]


def test_non_finite_numbers_that_python_writes_are_read(tmp_path):
    """Python's json writes NaN and Infinity, which are not JSON: the fast parser refuses them, and
    the collector still reads a diverged run's summary and metrics (a torn last line is skipped)."""
    from hpcllm.collect.records import scan

    run = write_run(
        tmp_path,
        "a",
        summary=engine_summary(status="failed", final_loss=float("nan"), mfu=float("inf")),
        state=RunState.FAILED,
        metrics=[{"step": 1, "loss": 7.5}, {"step": 2, "loss": float("nan")}],
    )
    with open(run.metrics, "a") as fh:
        fh.write('{"step": 3, "lo')
    (record,) = scan(tmp_path)
    assert record.problems == [] and record.summary is not None
    assert record.summary["status"] == "failed" and record.summary["mfu"] == float("inf")
    assert record.summary["final_loss"] != record.summary["final_loss"]  # NaN
    assert [m["step"] for m in record.metrics] == [1, 2]


def test_collect_status_and_report_read_runs_with_the_cyclic_gc_paused(results, monkeypatch, tmp_path):
    """The ~10^5 objects of 10,000 runs live to the end of the command: collecting them again and
    again was a fifth of collect's time (benchmarks/cli_scale.py). Paused inside, restored after."""
    import gc

    import hpcllm.collect.records as records
    import hpcllm.collect.report as report
    import hpcllm.launch.runstatus as runstatus

    seen = []

    def spying(real):
        def spy(*args, **kwargs):
            seen.append(gc.isenabled())
            return real(*args, **kwargs)

        return spy

    monkeypatch.setattr(records, "scan", spying(records.scan))
    monkeypatch.setattr(runstatus, "collect_status", spying(runstatus.collect_status))
    monkeypatch.setattr(report, "scan", spying(report.scan))
    assert gc.isenabled()
    assert collect(results).exit_code == 0
    assert runner.invoke(app, ["status", "-r", str(results)], env=WIDE).exit_code == 0
    page = tmp_path / "page.html"
    assert runner.invoke(app, ["report", "-r", str(results), "--output", str(page)], env=WIDE).exit_code == 0
    assert seen == [False, False, False] and gc.isenabled()


def test_the_dataframe_api_gives_the_same_seed_table(results):
    """collect_table (a DataFrame, for plots and scripts) formats like `collect --columns seed`."""
    from hpcllm.collect.table import COLUMNS, collect_table, format_table

    frame = collect_table(results)
    assert list(frame.columns) == COLUMNS and len(frame) == 3
    assert format_table(frame, "markdown") == collect(results, "--columns", "seed").output


def test_runs_of_different_experiments_are_never_one_line(tmp_path):
    """A tutorial's 1-GPU run and a fine-tune's share a setup: two groups, each its own efficiency
    base (a 1-GPU run's efficiency is 1.0), and the table says which experiment each row is."""
    from hpcllm.collect.plot import efficiency, run_label, scaling_groups
    from hpcllm.collect.records import scan

    write_run(tmp_path, "a1", experiment="tutorial", summary=engine_summary(world_size=1, global_batch_size=2))
    write_run(
        tmp_path,
        "b1",
        experiment="finetune",
        summary=engine_summary(world_size=1, global_batch_size=2, samples_per_s=5.0),
    )
    write_run(
        tmp_path,
        "b2",
        experiment="finetune",
        summary=engine_summary(world_size=2, global_batch_size=4, samples_per_s=9.0),
    )
    records = scan(tmp_path)
    groups = scaling_groups(records)
    assert sorted(groups) == [
        "finetune/leonardo: 2.7B FULL_SHARD mbs=2 AC=False seq=4096",
        "tutorial/leonardo: 2.7B FULL_SHARD mbs=2 AC=False seq=4096",
    ]
    finetune = groups["finetune/leonardo: 2.7B FULL_SHARD mbs=2 AC=False seq=4096"]
    assert [p["run"] for p in finetune] == ["b1", "b2"] and efficiency(finetune) == [1.0, 0.9]
    assert efficiency(groups["tutorial/leonardo: 2.7B FULL_SHARD mbs=2 AC=False seq=4096"]) == [1.0]
    assert all("a1" not in run_label(r) and "b2" not in run_label(r) for r in records)  # the setup, no id
    _, *rows = markdown_rows(collect(tmp_path, "--columns", "seed,experiment").output)
    assert [row[-1] for row in rows] == ["finetune", "finetune", "tutorial"]


def test_nothing_to_collect_says_what_is_there_and_exits_non_zero(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = collect(empty)
    assert result.exit_code == 2 and "no runs here" in result.output and "hpcllm submit" in result.output
    assert "| # Params" not in result.output  # no header-only table
    write_run(tmp_path / "r", "f", state=RunState.FAILED, reason="x")
    result = collect(tmp_path / "r")
    assert result.exit_code == 2 and "1 run, none completed (1 failed)" in result.output
    assert "hpcllm status" in result.output
    # Completed by its manifest, but the summary is damaged (warned about): not "none completed (1 completed)".
    damaged = write_run(tmp_path / "d", "c", summary=engine_summary())
    damaged.summary.write_text("{")
    result = collect(tmp_path / "d")
    assert result.exit_code == 2 and "none completed (1 completed, summary unusable)" in result.output


def test_best_before_any_search_says_so(results):
    result = collect(results, "--best")
    assert result.exit_code == 2, result.output
    assert "no search with a finished trial" in result.output and "hpcllm search" in result.output
    assert "|  |" not in result.output  # the broken empty table of old


def test_generate_on_a_missing_path_says_it_does_not_exist(tmp_path):
    (tmp_path / "exp").mkdir()
    result = runner.invoke(app, ["generate", str(tmp_path / "exp" / "no-such-run"), "-p", "hi"])
    assert result.exit_code == 2, result.output
    assert "no such folder or file" in result.output and "not a run directory" not in result.output
    assert f"{tmp_path / 'exp'} is empty" in result.output

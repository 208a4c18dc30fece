"""The collector's eval column and ``collect --best`` on hand-written run directories (no training)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from hpcllm.cli import app
from hpcllm.collect.best import best_table
from hpcllm.collect.table import COLUMNS, build_table, collect_table, completed_records, format_table
from hpcllm.fsutil import atomic_write_json

runner = CliRunner()


def summary(**fields: Any) -> dict[str, Any]:
    base = {
        "status": "completed",
        "n_params": 131392,
        "world_size": 1,
        "samples_per_s": 100.0,
        "grad_accum": 1,
        "micro_batch_size": 4,
        "global_batch_size": 4,
        "seq_len": 64,
        "precision": "FP_32",
        "sharding": "FULL_SHARD",
        "activation_checkpointing": "none",
        "gpu_type": "cpu",
        "mfu": None,
    }
    return {**base, **fields}


def write_run(root: Path, name: str, **fields: Any) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "run.yaml").write_text("{}\n")
    atomic_write_json(d / "summary.json", summary(**fields))
    return d


def test_eval_loss_column_only_when_a_run_has_one(tmp_path: Path) -> None:
    write_run(tmp_path / "a", "r1")
    assert "Eval Loss" not in build_table(completed_records(tmp_path / "a")).headers
    write_run(tmp_path / "b", "r1", eval_loss=2.345678)
    write_run(tmp_path / "b", "r2", micro_batch_size=8)
    assert list(collect_table(tmp_path / "b").columns) == COLUMNS  # `--columns seed`: the seed's layout
    table = build_table(completed_records(tmp_path / "b"), "seed,eval_loss")
    assert table.headers == [*COLUMNS, "Eval Loss"]
    assert "Eval Loss" in build_table(completed_records(tmp_path / "b")).headers  # default columns
    text = format_table(table, "markdown")
    assert text.splitlines()[0].endswith("| MFU | Eval Loss |")
    assert text.splitlines()[2].endswith("|  | 2.3457 |") and text.splitlines()[3].endswith("|  |  |")


def test_best_run_per_group_at_the_longest_rung(tmp_path: Path) -> None:
    folder = tmp_path / "exp" / "local"
    trials = [  # (run id, lr, scores by steps): t2 leads after 4 steps, t1 wins the longer rung
        ("t0", 0.1, {"4": None}),
        ("t1", 0.01, {"4": 3.0, "12": 2.0}),
        ("t2", 0.003, {"4": 2.9, "12": 2.5}),
    ]
    for run_id, _, scores in trials:
        write_run(folder, run_id, eval_loss=scores.get("12", scores["4"]))
    other = [("u0", 0.1, {"4": 5.0})]
    write_run(folder, "u0", eval_loss=5.0, world_size=2)
    atomic_write_json(
        folder / "search.json",
        {
            "experiment": "exp",
            "cluster": "local",
            "method": "halving",
            "metric": "eval_loss",
            "seed": 0,
            "rungs": [4, 12],
            "definition": "d",
            "groups": [
                {
                    "label": "model.n_layers=1",
                    "point": {"model.n_layers": 1},
                    "trials": [
                        {
                            "index": i,
                            "run_id": r,
                            "params": {"optim.lr": lr},
                            "rung": 1 if "12" in s else 0,
                            "state": "finished" if "12" in s else "stopped",
                            "scores": s,
                        }
                        for i, (r, lr, s) in enumerate(trials)
                    ],
                },
                {
                    "label": "model.n_layers=2",
                    "point": {"model.n_layers": 2},
                    "trials": [
                        {
                            "index": 0,
                            "run_id": r,
                            "params": {"optim.lr": lr},
                            "rung": 0,
                            "state": "finished",
                            "scores": s,
                        }
                        for r, lr, s in other
                    ],
                },
            ],
        },
    )
    table = best_table(tmp_path)
    assert list(table["Run"]) == ["t1", "u0"]
    assert list(table["Steps"]) == [12, 4] and list(table["optim.lr"]) == [0.01, 0.1]
    assert list(table["eval_loss"]) == [2.0, 5.0] and list(table["#GPUs"]) == [1, 2]
    result = runner.invoke(app, ["collect", "-r", str(tmp_path), "--best", "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["Group"], r["Run"]) for r in rows] == [("model.n_layers=1", "t1"), ("model.n_layers=2", "u0")]
    assert "Eval Loss" not in rows[0]  # the metric column says it already


def test_best_without_searches_says_so(tmp_path: Path) -> None:
    write_run(tmp_path, "r1")
    result = runner.invoke(app, ["collect", "-r", str(tmp_path), "--best"])
    assert result.exit_code == 2 and "no search with a finished trial" in result.output  # a script can tell

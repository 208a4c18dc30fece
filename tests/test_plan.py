"""`hpcllm plan`: each point's step time and where it came from, requeue chunks, checkpoints,
node-hours and GPU-hours, and the comparison with an account's allowance (parsing here; the live
scheduler in test_slurm_accounting.py)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from collect_support import engine_summary, write_run
from typer.testing import CliRunner

from hpcllm.cli import app
from hpcllm.collect.steptimes import seed_mfu
from hpcllm.config.accounting import AccountingSettings, Billing
from hpcllm.config.cluster import load_cluster
from hpcllm.config.experiment import load_experiment
from hpcllm.launch.accounting import AccountBudget, Allowance, parse_grp_tres_mins, parse_grp_tres_raw
from hpcllm.plan.cost import SOURCE_FIT, SOURCE_FLOPS, SOURCE_LIMIT, SOURCE_MEASURED, SOURCE_SEED, StepTime, point_cost
from hpcllm.plan.expand import expand_experiment
from hpcllm.plan.seed import seed_rows
from hpcllm.site.budget import Plan, build_plan

REPO = Path(__file__).resolve().parents[1]


def experiment(tmp_path: Path, grid: dict, *, steps: int = 60, time: str = "00:30:00", **training) -> Path:
    doc = {
        "name": "cost",
        "resources": {"time": time},
        "training": {
            "model": {"preset": "2.7b"},
            "train": {"steps": steps, "micro_batch_size": 2},
            "parallel": {"precision": "BF_16", "sharding": "FULL_SHARD"},
            "data": {"path": "/data/x"},
            "checkpoint": {"at_end": False},
            **training,
        },
        "grid": grid,
    }
    path = tmp_path / "cost.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def sources(plan: Plan) -> dict[int, tuple[str, str]]:
    return {c.gpus: (c.step.source, c.step.detail) for c in plan.costs}


def test_each_point_says_where_its_step_time_came_from(in_project, tmp_path: Path) -> None:
    # 8..256 GPUs are the seed's rows; 512 GPUs only the fit of those rows can price; MBS 3 nothing but FLOPs.
    exp = experiment(tmp_path, {"resources.nodes": [2, 128], "train.micro_batch_size": [2, 3]})
    plan = build_plan(exp, "leonardo", results_root=tmp_path / "none", ask_scheduler=False)
    by = {(c.gpus, c.step.source) for c in plan.costs}
    assert by == {(8, SOURCE_SEED), (512, SOURCE_FIT), (8, SOURCE_FLOPS), (512, SOURCE_FLOPS)}
    seed = next(c for c in plan.costs if c.step.source == SOURCE_SEED)
    row1 = next(r for r in seed_rows() if r.key.cluster == "leonardo" and r.row == 1)
    assert seed.step.detail == "leonardo row 1"
    assert seed.step.seconds == pytest.approx(row1.key.gbs / row1.samples_per_s)
    assert seed.node_hours == pytest.approx(2 * 60 * seed.step.seconds / 3600)
    assert seed.gpu_hours == pytest.approx(4 * seed.node_hours)
    fit = next(c for c in plan.costs if c.step.source == SOURCE_FIT)
    # A budget takes every row, the two far below the trend (128, 256 GPUs) too: 512 GPUs at their pace.
    assert 1.3 < fit.step.seconds < 2.0 and fit.step.uncertainty_s
    assert "fitted to 6 of the seed's rows at 8-256 GPUs, 2 far below the trend included" in fit.step.detail
    flops = next(c for c in plan.costs if c.step.source == SOURCE_FLOPS and c.gpus == 8)
    assert f"MFU {seed_mfu('A100'):.2f} (median of the seed's A100 rows)" in flops.step.detail
    assert plan.total.node_hours == pytest.approx(sum(c.node_hours for c in plan.costs))


def test_a_finished_run_of_the_same_configuration_comes_first(in_project, tmp_path: Path) -> None:
    exp = experiment(tmp_path, {"resources.nodes": [2]})
    results = tmp_path / "results"
    write_run(results, "earlier", experiment="other", summary=engine_summary(step_time_s=0.7))
    plan = build_plan(exp, "leonardo", results_root=results, ask_scheduler=False)
    assert sources(plan)[8] == (SOURCE_MEASURED, "run earlier (1 of this configuration)")
    assert plan.costs[0].step.seconds == 0.7


def test_no_step_time_prices_the_time_limit_and_a_cpu_cluster_has_no_flops_source(in_project, tmp_path: Path) -> None:
    exp = experiment(tmp_path, {"resources.nodes": [1, 2]}, time="01:00:00", model={"preset": "tiny"})
    plan = build_plan(exp, "localslurm", results_root=tmp_path / "none", ask_scheduler=False)
    assert [c.step.source for c in plan.costs] == [SOURCE_LIMIT, SOURCE_LIMIT]
    assert [c.node_hours for c in plan.costs] == [1.0, 2.0]
    assert plan.planned_min("cpu") == 3 * 60 * 2  # 2 CPUs a node (cpus_per_node)


def test_requeue_chunks_and_checkpoints_follow_the_time_limit(in_project, tmp_path: Path) -> None:
    exp = experiment(tmp_path, {"resources.nodes": [2]}, steps=10_000, checkpoint={"every_steps": 1000})
    cluster = load_cluster("leonardo")
    spec = expand_experiment(load_experiment(exp), cluster, "x")[0]
    step = StepTime(0.5, SOURCE_SEED, "x")  # 5,000 s of steps; a 30-min job trains 1,500 s (300 s signal margin)
    unpriced = point_cost(spec, cluster, step)
    # 10 by count, 1 at the end, a save and a load at each of 3 requeues
    assert (unpriced.chunks, unpriced.checkpoints, unpriced.checkpoint_s) == (4, 10 + 1 + 2 * 3, None)
    slow = cluster.model_copy(update={"accounting": AccountingSettings(checkpoint_write_gib_s=0.1)})
    priced = point_cost(spec, slow, step)
    save = priced.checkpoint_s
    assert save is not None and 290 < save < 310  # 2.7B x 12 bytes (29.8 GiB) at 0.1 GiB/s
    # Each requeue adds a save and a load, which may need another job: the count is a fixed point.
    assert priced.checkpoints == 10 + 1 + 2 * (priced.chunks - 1)
    assert priced.wall_s == pytest.approx(5000 + priced.checkpoints * save)
    assert priced.chunks == math.ceil(priced.wall_s / 1500) > 4
    assert priced.max_jobs == cluster.max_restarts + 1 < priced.chunks  # the plan table marks it "(> max)"


def test_the_sites_billing_unit_where_the_profile_states_it(in_project, tmp_path: Path, monkeypatch) -> None:
    exp = experiment(tmp_path, {"resources.nodes": [2]})
    leo = load_cluster("leonardo")
    billed = leo.model_copy(
        update={"accounting": AccountingSettings(billing=Billing(unit="core-h", per_node_hour=32, source="letter"))}
    )
    monkeypatch.setattr("hpcllm.site.budget.load_cluster", lambda name: billed)
    plan = build_plan(exp, "leonardo", results_root=tmp_path / "none", ask_scheduler=False)
    assert plan.total.unit == "core-h" and plan.total.billed == pytest.approx(32 * plan.total.node_hours)


def test_grp_tres_mins_and_usage_are_read_and_an_overrun_is_named(in_project, tmp_path: Path) -> None:
    assoc = "hpcllm_budget||cpu=600,gres/gpu=N\nhpcllm_budget|root|cpu=50\n"
    assert parse_grp_tres_mins(assoc, "hpcllm_budget") == {"cpu": 600.0}
    share = "hpcllm_budget||cpu=12,mem=0,node=6,billing=12\n hpcllm_budget|root|cpu=12,mem=0\n"
    assert parse_grp_tres_raw(share, "hpcllm_budget")["cpu"] == 12.0
    exp = experiment(tmp_path, {"resources.nodes": [1, 2]}, time="01:00:00", model={"preset": "tiny"})
    plan = build_plan(exp, "localslurm", results_root=tmp_path / "none", ask_scheduler=False)
    plan.budget = AccountBudget("hpcllm_budget", [Allowance("hpcllm_budget", "cpu", 600, 300)], "test")
    assert [(o.tres, o.planned_min, o.left_min) for o in plan.overruns] == [("cpu", 360.0, 300.0)]
    plan.budget = AccountBudget("hpcllm_budget", [Allowance("hpcllm_budget", "cpu", 600, 200)], "test")
    assert plan.overruns == []


def test_plan_command_prints_points_sources_and_totals(in_project, tmp_path: Path) -> None:
    exp = experiment(tmp_path, {"resources.nodes": [2, 128]})
    out = CliRunner().invoke(app, ["plan", str(exp), "--cluster", "leonardo", "--results", str(tmp_path / "r")])
    assert out.exit_code == 0, out.output
    assert "seed: leonardo row 1" in out.stdout and "fit: t = a + b·log2 n fitted to 6" in out.stdout
    assert "total: 2 points" in out.stdout and "node-hours" in out.stdout and "GPU-hours" in out.stdout
    bad = CliRunner().invoke(app, ["plan", str(exp), "--cluster", "nope"])
    assert bad.exit_code == 2


def test_only_what_submit_would_queue_is_priced(in_project, tmp_path: Path) -> None:
    # Every seed row fits now (docs/memory.md): MBS 16 instead of the seed's MBS 4 makes 6 points that do not.
    doc = yaml.safe_load((REPO / "experiments" / "scaling_2.7b.yaml").read_text())
    doc["grid"]["train.micro_batch_size"] = [2, 16]
    exp = tmp_path / "scaling_2.7b.yaml"
    exp.write_text(yaml.safe_dump(doc))
    plan = build_plan(exp, "leonardo", results_root=tmp_path / "none", ask_scheduler=False)
    assert (len(plan.costs), len(plan.unfit)) == (12, 6)  # the MBS-16 points are estimated over 64 GiB
    everything = build_plan(exp, "leonardo", results_root=tmp_path / "none", ask_scheduler=False, memory_check=False)
    assert len(everything.costs) == 18
    out = CliRunner().invoke(
        app, ["submit", str(exp), "--cluster", "leonardo", "--dry-run", "--results", str(tmp_path)]
    )
    # exit 3 (EXIT_SOME_REFUSED): the 6 points over the GPU memory are refused, the 12 others planned
    assert out.exit_code == 3 and f"total: 12 points, {plan.total.node_hours:.2f} node-hours" in out.stdout

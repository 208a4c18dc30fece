"""explore-batch without running jobs: probe planning, the index, and --apply on written reports.

The reports here are written as the engine writes them (hpcllm.config.probe.ProbeReport); the real
probes run in tests/test_explore_local.py (local backend) and test_slurm_explore.py (SLURM).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from probe_support import probe_report
from typer.testing import CliRunner

from hpcllm.cli import app
from hpcllm.config.cluster import load_cluster
from hpcllm.config.experiment import load_experiment
from hpcllm.config.loader import load_model
from hpcllm.config.probe import ProbeTrial
from hpcllm.config.training import TrainingConfig
from hpcllm.errors import ConfigError, HpcllmError
from hpcllm.fsutil import atomic_write_json
from hpcllm.launch.orchestrate import submit_experiment
from hpcllm.launch.probeindex import load_index, probe_key
from hpcllm.plan.expand import expand_experiment
from hpcllm.plan.memory import largest_fitting_mbs
from hpcllm.plan.memory.runs import run_spec
from hpcllm.rundir import RunDir
from hpcllm.tune.explore import GENERATED_MARK, ProbeSettings, apply_probes, explore_batch, plan_probes

SCALING = Path("experiments/scaling_2.7b.yaml")
SETTINGS = ProbeSettings(max_mbs=64, steps=2, warmup_steps=1, min_gain=0.05)


def write_report(results: Path, run_id: str, trials: list[ProbeTrial], status: str = "completed") -> None:
    report = probe_report(run_id, trials, status=status)
    report.conclude("memory")
    atomic_write_json(RunDir.of(results, "scaling_2.7b", "leonardo", run_id).probe, report.model_dump(mode="json"))


MEASURED = [
    ProbeTrial(mbs=3, status="ok", samples_per_s_per_gpu=2.4, mem_peak_gib=41.0, mem_reserved_gib=44.0),
    ProbeTrial(mbs=6, status="oom", error="CUDA out of memory"),
    ProbeTrial(mbs=4, status="ok", samples_per_s_per_gpu=2.5, mem_peak_gib=52.0, mem_reserved_gib=55.0),
    ProbeTrial(mbs=5, status="ok", samples_per_s_per_gpu=2.6, mem_peak_gib=59.0, mem_reserved_gib=62.0),
]


@pytest.fixture
def explored(in_project: Path, tmp_path: Path) -> Path:
    """scaling_2.7b's probes rendered (dry run) and every one answered with MEASURED."""
    explore_batch(SCALING, "leonardo", tmp_path, settings=SETTINGS, dry_run=True)
    index = load_index(tmp_path, "scaling_2.7b", "leonardo")
    assert index is not None
    for entry in index.probes.values():
        write_report(tmp_path, entry.run_id, MEASURED)
    return tmp_path


def test_one_probe_per_setup_starting_at_the_estimate(in_project: Path) -> None:
    cluster = load_cluster("leonardo")
    plans = plan_probes(load_experiment(SCALING), cluster, "x", SETTINGS)
    # 6 node counts x {FULL_SHARD, HYBRID_SHARD}; MBS 2 and 4 of one setup share a probe.
    assert len(plans) == 12
    assert sum(len(p.points) for p in plans) == 18
    for plan in plans:
        assert {probe_key(s) for s in plan.points} == {plan.key}
        first = plan.points[0]
        mspec = run_spec(first.training, nodes=first.resources.nodes, gpus_per_node=4, cluster=cluster)
        probe = plan.spec.training.probe
        assert probe is not None and probe.start_mbs == largest_fitting_mbs(mspec, 64.0) == plan.estimated_fit
        assert probe.memory_budget_gib == 64.0 and probe.max_mbs == 64 and probe.min_gain == 0.05
        assert plan.spec.run_id.startswith("probe-2.7b-") and plan.spec.training.run_id == plan.spec.run_id
        assert plan.spec.training.checkpoint.at_end is False and plan.spec.training.checkpoint.every_minutes is None
        assert "train.micro_batch_size" not in plan.spec.point


def test_dry_run_renders_probe_runs_and_the_index(in_project: Path, tmp_path: Path) -> None:
    result = explore_batch(SCALING, "leonardo", tmp_path, settings=SETTINGS, dry_run=True)
    assert [r.action for r in result.submitted.runs] == ["rendered"] * 12
    index = load_index(tmp_path, "scaling_2.7b", "leonardo")
    assert index is not None and set(index.probes) == {p.key for p in result.plans}
    for plan in result.plans:
        run_dir = RunDir.of(tmp_path, "scaling_2.7b", "leonardo", plan.spec.run_id)
        assert load_model(TrainingConfig, run_dir.config).probe == plan.spec.training.probe
        assert "#SBATCH --nodes=" in run_dir.job_script.read_text()
    again = explore_batch(SCALING, "leonardo", tmp_path, settings=SETTINGS, dry_run=True)
    assert [p.spec.run_id for p in again.plans] == [p.spec.run_id for p in result.plans]


def test_apply_writes_the_best_size_within_the_margin(explored: Path, tmp_path: Path) -> None:
    out = tmp_path / "tuned.yaml"
    result = apply_probes(SCALING, "leonardo", explored, output=out, margin=0.10)
    # MBS 5 is fastest but its 62 GiB reserved is within 10% of 64 GiB; MBS 4 (55 GiB) is next.
    assert {c.trial.mbs for c in result.choices} == {4}
    text = out.read_text()
    assert text.startswith(GENERATED_MARK)
    tuned = load_experiment(out)
    assert tuned.name == "scaling_2.7b" and not tuned.grid and not tuned.where
    specs = expand_experiment(tuned, load_cluster("leonardo"), str(out))
    # MBS 2 and 4 points of a FULL_SHARD setup are now one point at MBS 4: 12 points in all.
    assert len(specs) == 12 and {s.training.train.micro_batch_size for s in specs} == {4}
    assert {(s.resources.nodes, s.training.parallel.sharding) for s in specs} == {
        (n, sh) for n in (2, 4, 8, 16, 32, 64) for sh in ("FULL_SHARD", "HYBRID_SHARD")
    }
    assert apply_probes(SCALING, "leonardo", explored, output=out, margin=0.0).choices[0].trial.mbs == 5


def test_the_tuned_file_is_accepted_by_submit_and_its_measured_fit_beats_the_estimate(
    explored: Path, tmp_path: Path
) -> None:
    out = tmp_path / "tuned.yaml"
    apply_probes(SCALING, "leonardo", explored, output=out, margin=0.0)  # MBS 5, the fastest
    # The estimate puts 2.7b at MBS 5 over 64 GiB below 32 GPUs, or HYBRID_SHARD (docs/memory.md); the
    # probes ran MBS 5, so nothing is skipped.
    result = submit_experiment(out, "leonardo", explored, dry_run=True)
    assert len(result.runs) == 12 and not result.unfit
    cli = CliRunner().invoke(
        app,
        ["submit", str(out), "--cluster", "leonardo", "--dry-run", "--results", str(tmp_path / "elsewhere")],
        env={"COLUMNS": "250"},
    )
    # No probes there: the estimate decides (MBS 5 fits only FULL_SHARD on 32 GPUs or more: 4 of 12 points;
    # exit 3: some points left out, the others planned).
    assert cli.exit_code == 3 and "8 points skipped" in cli.output


def test_a_fixed_global_batch_keeps_it_through_grad_accum(in_project: Path, tmp_path: Path) -> None:
    exp = yaml.safe_load(SCALING.read_text())
    exp["training"]["train"].update(global_batch_size=64, grad_accum=4)  # 2 x 4 x 8 GPUs
    exp["grid"] = {"resources.nodes": [2]}  # 8 GPUs: 8 sequences per rank per step
    exp.pop("where")
    source = tmp_path / "gbs.yaml"
    source.write_text(yaml.safe_dump(exp))
    explore_batch(source, "leonardo", tmp_path, settings=SETTINGS, dry_run=True)
    (entry,) = load_index(tmp_path, "scaling_2.7b", "leonardo").probes.values()
    write_report(tmp_path, entry.run_id, MEASURED)
    result = apply_probes(source, "leonardo", tmp_path, output=tmp_path / "out.yaml", margin=0.0)
    (choice,) = result.choices
    assert (choice.trial.mbs, choice.grad_accum) == (4, 2)  # 5 is faster but does not divide 8
    (spec,) = expand_experiment(load_experiment(tmp_path / "out.yaml"), load_cluster("leonardo"), "out")
    assert (
        spec.training.train.micro_batch_size,
        spec.training.train.grad_accum,
        spec.training.train.global_batch_size,
    ) == (4, 2, 64)


def test_apply_waits_for_every_probe(in_project: Path, tmp_path: Path) -> None:
    with pytest.raises(HpcllmError, match=r"no probes of 'scaling_2\.7b' on 'leonardo'.*run `hpcllm explore-batch"):
        apply_probes(SCALING, "leonardo", tmp_path)
    result = explore_batch(SCALING, "leonardo", tmp_path, settings=SETTINGS, dry_run=True)
    for plan in result.plans[1:]:
        write_report(tmp_path, plan.spec.run_id, MEASURED)
    write_report(tmp_path, result.plans[0].spec.run_id, MEASURED[:1], status="running")
    with pytest.raises(
        HpcllmError,
        match=rf"1 probe\(s\) of 'scaling_2.7b' have no answer yet: "
        rf"{result.plans[0].spec.run_id}: rendered",
    ):
        apply_probes(SCALING, "leonardo", tmp_path)


def test_apply_writes_beside_the_results_not_into_the_clone(explored: Path, in_project: Path) -> None:
    before = sorted((in_project / "experiments").iterdir())
    result = apply_probes(SCALING, "leonardo", explored, margin=0.10)
    assert result.output == explored / "scaling_2.7b" / "leonardo" / "scaling_2.7b.leonardo.tuned.yaml"
    assert result.output.read_text().startswith(GENERATED_MARK)
    assert sorted((in_project / "experiments").iterdir()) == before  # nothing new in git's experiments/


def test_setups_where_nothing_fits_are_left_out_with_a_warning(explored: Path, tmp_path: Path) -> None:
    index = load_index(explored, "scaling_2.7b", "leonardo")
    hybrid = [e.run_id for e in index.probes.values() if "HYBRID" in e.label]
    for run_id in hybrid:
        write_report(explored, run_id, [ProbeTrial(mbs=1, status="oom", error="CUDA out of memory")])
    result = apply_probes(SCALING, "leonardo", explored, output=tmp_path / "t.yaml")
    assert len(result.warnings) == 6 and all("left out" in w for w in result.warnings)
    specs = expand_experiment(load_experiment(tmp_path / "t.yaml"), load_cluster("leonardo"), "t")
    assert {s.training.parallel.sharding for s in specs} == {"FULL_SHARD"}


def test_apply_never_overwrites_a_hand_written_file(explored: Path, tmp_path: Path) -> None:
    mine = tmp_path / "mine.yaml"
    mine.write_text("name: mine\n")
    with pytest.raises(ConfigError, match="was not written by `explore-batch --apply`: refusing to overwrite"):
        apply_probes(SCALING, "leonardo", explored, output=mine)
    assert mine.read_text() == "name: mine\n"
    with pytest.raises(ConfigError, match="is the experiment itself"):
        apply_probes(SCALING, "leonardo", explored, output=SCALING)
    out = tmp_path / "t.yaml"
    apply_probes(SCALING, "leonardo", explored, output=out)
    apply_probes(SCALING, "leonardo", explored, output=out)  # its own file: rewritten


def test_cli_lists_the_probes_and_applies(explored: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    listed = runner.invoke(
        app,
        [
            "explore-batch",
            str(SCALING),
            "--cluster",
            "leonardo",
            "--dry-run",
            "--results",
            str(explored),
            "--max-mbs",
            "64",
            "--steps",
            "2",
            "--min-gain",
            "0.05",
        ],
        env={"COLUMNS": "250"},
    )
    assert listed.exit_code == 0, listed.output
    assert "12 probes" in listed.output and "probe-2.7b-n2x4-mbs4" in listed.output
    out = tmp_path / "cli.yaml"
    apply = ["explore-batch", str(SCALING), "--cluster", "leonardo", "--apply", "--results", str(explored)]
    applied = runner.invoke(app, [*apply, "--output", str(out)], env={"COLUMNS": "250"})
    assert applied.exit_code == 0, applied.output  # the same settings: the same probe runs, already answered
    assert f"micro-batch sizes written to {out}" in applied.output and out.exists()
    bad = runner.invoke(app, [*apply, "--margin", "1.5"])
    assert bad.exit_code == 2 and "--margin: 1.5 is not a fraction in [0, 1)" in bad.output


def test_collect_shows_probes_in_their_own_table_not_in_the_scaling_table(explored: Path) -> None:
    from hpcllm.collect.probes import collect_probes
    from hpcllm.collect.table import collect_table
    from hpcllm.rundir import find_run_dirs

    index = load_index(explored, "scaling_2.7b", "leonardo")
    for entry in index.probes.values():  # what the engine writes at the end of a probe
        atomic_write_json(
            RunDir.of(explored, "scaling_2.7b", "leonardo", entry.run_id).summary,
            {"kind": "probe", "status": "completed", "run_id": entry.run_id, "world_size": 8},
        )
    assert collect_table(explored).empty
    probes = collect_probes(find_run_dirs(explored))
    assert len(probes) == 12 * len(MEASURED)
    first = next(iter(index.probes.values())).run_id
    one = [row for row in probes if row["Probe"] == first]
    assert [r["MBS"] for r in one] == [3, 6, 4, 5] and [r["Status"] for r in one] == ["ok", "oom", "ok", "ok"]
    assert [r["Best"] for r in one] == ["", "", "", "*"]  # fastest that fitted, before any margin
    assert one[2]["Peak GiB"] == 55.0  # reserved: what a CUDA run runs out of

"""Scaling fits (hpcllm.collect.fits): the model, the flags, and where they show (collect, compare, report)."""

from __future__ import annotations

import math

import pytest
from collect_support import engine_summary, write_run
from typer.testing import CliRunner

from hpcllm.cli import app
from hpcllm.collect.fits import Point, SetupKey, fit_line, fit_seed, fit_setup, verdicts_by_name
from hpcllm.collect.report import build_report
from hpcllm.plan.seed import seed_rows

KEY = SetupKey("c", "e", "2.7b", 1, "FULL_SHARD", 2, 1, 4096, "BF_16", "none")


def test_the_line_recovers_its_parameters_and_its_interval_holds_the_truth():
    gpus = [8, 16, 32, 64]
    line = fit_line(gpus, [0.8 + 0.01 * math.log2(g) for g in gpus])
    assert line is not None
    assert line.a == pytest.approx(0.8) and line.b == pytest.approx(0.01)
    # Exact data: the scatter is the noise floor, and the band widens away from the data.
    assert line.step_se(1024) > line.step_se(32) > 0
    assert fit_line([8, 8], [1.0, 1.1]) is None  # one size: no slope


def test_a_slow_large_run_is_flagged_and_left_out_of_the_fit():
    step = {8: 1.0, 16: 1.01, 32: 1.02, 64: 1.03, 128: 1.6}  # t = 0.97 + 0.01·log2 n, but 128 is 50 % slower
    points = [Point(g, g * 2 / t, f"r{g}") for g, t in step.items()]
    fit = fit_setup(KEY, 2, points)
    flagged = [v.point.gpus for v in fit.flagged]
    assert flagged == [128]
    assert fit.line is not None and fit.line.b == pytest.approx(0.01)
    # Predictions are for the sizes after the largest run, from the unflagged runs, with a band.
    assert [p.gpus for p in fit.predictions] == [256, 512]
    p256 = fit.predictions[0]
    assert p256.low < 256 * 2 / (0.97 + 0.08) < p256.high
    assert [round(v.efficiency, 2) for v in sorted(fit.verdicts, key=lambda v: v.point.gpus)][:2] == [1.0, 0.99]


def test_a_run_within_its_setups_noise_is_not_flagged():
    points = [Point(8, 16.0, "a"), Point(16, 31.6, "b"), Point(32, 60.0, "c")]  # 32: 5 % below a flat line
    assert not fit_setup(KEY, 2, points).flagged


def test_the_seeds_leonardo_2_7b_full_shard_rows_at_128_and_256_gpus_are_flagged():
    verdicts = verdicts_by_name(fit_seed())
    leonardo = {r.row: r for r in seed_rows() if r.key.cluster == "leonardo"}
    full_mbs2 = [
        r for r in leonardo.values() if r.model == "2.7b" and r.key.sharding == "FULL_SHARD" and r.key.mbs == 2
    ]
    flagged = sorted(r.key.gpus for r in full_mbs2 if verdicts[r.source].flagged)
    assert flagged == [128, 256]
    # The same sizes under HYBRID_SHARD kept up at 128 GPUs (MFU 0.56): not flagged.
    hybrid_128 = next(r for r in leonardo.values() if r.key.sharding == "HYBRID_SHARD" and r.key.gpus == 128)
    assert not verdicts[hybrid_128.source].flagged


def test_collect_shows_the_flag_compare_seed_judges_the_seeds_rows_and_the_report_has_the_fits(tmp_path):
    for gpus, sps in ((8, 18.6), (16, 37.0), (32, 73.8), (64, 146.0), (128, 206.0)):
        summary = engine_summary(world_size=gpus, global_batch_size=2 * gpus, samples_per_s=sps)
        write_run(tmp_path, f"r{gpus}", summary=summary)
    out = CliRunner().invoke(app, ["collect", str(tmp_path)])
    assert out.exit_code == 0, out.output
    header = next(line for line in out.stdout.splitlines() if line.startswith("| # Params"))
    assert header.rstrip(" |").endswith("vs fit")
    row_128 = next(line for line in out.stdout.splitlines() if line.startswith("| 2.7 | 128 |"))
    assert "% below fit" in row_128 and "within" not in row_128
    assert "below the scaling fit: r128 (exp leonardo 2.7b FULL_SHARD" in out.stderr
    assert "Scaling fits" not in out.stderr  # the fits themselves on request
    listed = CliRunner().invoke(app, ["collect", str(tmp_path), "--fits"], env={"COLUMNS": "300"})
    assert "Scaling fits" in listed.stderr and "exp leonardo 2.7b FULL_SHARD" in listed.stderr

    compared = CliRunner().invoke(app, ["collect", str(tmp_path), "--compare", "seed", "--format", "csv", "--fits"])
    assert compared.exit_code == 0, compared.output
    lines = compared.stdout.splitlines()
    fit_col = lines[0].split(",").index("Seed vs fit")
    row_10 = [line.split(",") for line in lines[1:] if line.split(",")[2:4] == ["2.7", "128"]]
    assert any(cells[fit_col].endswith("below fit") for cells in row_10)
    assert "Scaling fits of the seed's rows" in compared.stderr

    report = build_report(tmp_path)
    assert any(row[0].startswith("exp leonardo 2.7b") and "128" in row[3] for row in report.fits)

"""Config loading: good files load, bad files give one clear line naming file, key, value and rule."""

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hpcllm.cli import app
from hpcllm.config.cluster import ClusterProfile, available_clusters, load_cluster, parse_slurm_time
from hpcllm.config.experiment import load_experiment
from hpcllm.config.loader import load_model
from hpcllm.config.model import ModelConfig, preset_names
from hpcllm.errors import ConfigError
from hpcllm.plan.expand import expand_experiment

runner = CliRunner()


@pytest.mark.parametrize("name", ["leonardo", "marenostrum5", "local"])
def test_shipped_profiles_load(in_project, name):
    profile = load_cluster(name)
    assert profile.name == name


def test_leonardo_and_mn5_facts(in_project):
    leo, mn5 = load_cluster("leonardo"), load_cluster("marenostrum5")
    assert (leo.partition, leo.gpu_type, leo.gpus_per_node, leo.cpus_per_node) == ("boost_usr_prod", "A100", 4, 32)
    assert parse_slurm_time(leo.qos["normal"].max_time) == 24 * 3600
    assert leo.qos["boost_qos_dbg"].max_nodes == 2 and parse_slurm_time(leo.qos["boost_qos_dbg"].max_time) == 1800
    assert parse_slurm_time(leo.qos["boost_qos_lprod"].max_time) == 4 * 24 * 3600
    assert (mn5.partition, mn5.gpu_type, mn5.gpus_per_node, mn5.cpus_per_node) == ("acc", "H100", 4, 80)
    assert set(mn5.qos) == {"acc_debug", "acc_bscls", "acc_ehpc"}
    assert mn5.mem is None and mn5.min_cpus_per_gpu == 20


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


BAD_CLUSTERS = [
    ("scheduler: pbs\n", r"bad\.yaml: scheduler: Input should be 'slurm' or 'local' \(got 'pbs'\)"),
    ("gpus_per_nod: 4\n", r"bad\.yaml: gpus_per_nod: unknown key; allowed keys here: name, description"),
    ("qos: {normal: {max_time: '25h'}}\n", r"bad\.yaml: qos\.normal\.max_time: .*\[D-\]HH:MM:SS"),
    ("gpus_per_node: -1\n", r"bad\.yaml: gpus_per_node: Input should be greater than 0 \(got -1\)"),
    (
        "qos: {normal: {max_time: '01:00:00', maxnodes: 2}}\n",
        r"qos\.normal\.maxnodes: unknown key; allowed keys here: max_time, max_nodes",
    ),
]
GOOD_CLUSTER = "name: x\nscheduler: slurm\ngpu_type: A100\ngpus_per_node: 4\ncpus_per_node: 32\n"


@pytest.mark.parametrize("patch,pattern", BAD_CLUSTERS, ids=[p for p, _ in BAD_CLUSTERS])
def test_bad_cluster_file_errors(tmp_path, patch, pattern):
    # The patch replaces the good line with its key (a repeated key would itself be the error).
    kept = [line for line in GOOD_CLUSTER.splitlines(keepends=True) if line.split(":")[0] != patch.split(":")[0]]
    path = _write(tmp_path, "bad.yaml", "".join(kept) + patch)
    with pytest.raises(ConfigError, match=pattern):
        load_model(ClusterProfile, path)


def test_yaml_syntax_error_has_line(tmp_path):
    path = _write(tmp_path, "bad.yaml", "name: x\nscheduler: [slurm\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:\d+:\d+: invalid YAML"):
        load_model(ClusterProfile, path)


EXPERIMENT = """
name: e
training:
  model: {preset: tiny}
  data: {path: data/demo}
"""


@pytest.mark.parametrize(
    "extra,pattern",
    [
        (
            "grid: {parallel.sharding: [FULL, HYBRID_SHARD]}\n",
            r"point \{parallel\.sharding=FULL\}: parallel\.sharding: "
            r"Input should be 'FULL_SHARD', 'HYBRID_SHARD' or 'NO_SHARD'",
        ),
        (
            "grid: {train.micro_batchsize: [1]}\n",
            r"train\.micro_batchsize: unknown key; allowed keys here: steps, micro_batch_size",
        ),
        ("grid: {trian.steps: [1]}\n", r"grid: .*'trian\.steps' must start with one of: resources, run_id"),
        ("grid: {model.preset: [tiny, huge]}\n", r"'huge' is not a model preset; known presets: tiny, 60m, 125m"),
        ("zip: [{train.steps: [1, 2], train.grad_accum: [1]}]\n", r"zip: group lists must have equal lengths"),
        ("where: \"__import__('os')\"\n", r"where: Call is not allowed"),
        ('where: "train.nope > 1"\n', r"where: 'train\.nope' is not a key"),
        ("training2: {}\n", r"e\.yaml: training2: unknown key; allowed keys here: name, description, resources"),
    ],
)
def test_bad_experiment_errors(in_project, tmp_path, extra, pattern):
    path = _write(tmp_path, "e.yaml", EXPERIMENT + extra)
    with pytest.raises(ConfigError, match=pattern):
        expand_experiment(load_experiment(path), load_cluster("local"), str(path))


def test_gbs_mismatch_is_explained(in_project, tmp_path):
    path = _write(
        tmp_path,
        "e.yaml",
        EXPERIMENT.replace(
            "model: {preset: tiny}", "model: {preset: tiny}\n  train: {global_batch_size: 5, micro_batch_size: 2}"
        ),
    )
    with pytest.raises(
        ConfigError,
        match=r"global_batch_size: 5 != micro_batch_size \(2\) x grad_accum \(1\) x data-parallel size \(2\) = 4",
    ):
        expand_experiment(load_experiment(path), load_cluster("local"), str(path))


def test_cluster_limits_are_checked_at_render_time(in_project, tmp_path):
    base = EXPERIMENT + "resources: {nodes: 3, qos: boost_qos_dbg, time: '00:20:00'}\n"
    path = _write(tmp_path, "e.yaml", base)
    with pytest.raises(
        ConfigError,
        match=r"QoS 'boost_qos_dbg' does not admit 3 nodes for 00:20:00: boost_qos_dbg allows at most 2 nodes",
    ):
        expand_experiment(load_experiment(path), load_cluster("leonardo"), str(path))
    path = _write(tmp_path, "e.yaml", EXPERIMENT + "resources: {nodes: 5000}\n")
    with pytest.raises(ConfigError, match=r"5000 nodes requested, but cluster 'leonardo' has at most 3456"):
        expand_experiment(load_experiment(path), load_cluster("leonardo"), str(path))
    path = _write(tmp_path, "e.yaml", EXPERIMENT + "resources: {qos: boost_qos_dbg, time: '01:00:00'}\n")
    with pytest.raises(
        ConfigError,
        match=r"QoS 'boost_qos_dbg' does not admit 1 nodes for 01:00:00: boost_qos_dbg allows at most 00:30:00",
    ):
        expand_experiment(load_experiment(path), load_cluster("leonardo"), str(path))
    path = _write(tmp_path, "e.yaml", EXPERIMENT + "resources: {qos: premium}\n")
    with pytest.raises(ConfigError, match=r"'premium' is not a QoS of 'leonardo'; allowed: normal, boost_qos_dbg"):
        expand_experiment(load_experiment(path), load_cluster("leonardo"), str(path))


def test_account_resolution(in_project, monkeypatch):
    leo = load_cluster("leonardo")
    with pytest.raises(ConfigError, match=r"needs an account.*HPCLLM_ACCOUNT.*--account"):
        leo.resolve_account(None)
    monkeypatch.setenv("HPCLLM_ACCOUNT", "from_env")
    assert leo.resolve_account(None) == "from_env"
    assert leo.resolve_account("from_cli") == "from_cli"
    assert load_cluster("local").resolve_account(None) is None


def test_unknown_cluster_lists_known(in_project):
    with pytest.raises(ConfigError, match=r"no cluster profile 'nope'.*known: local, leonardo|known: .*leonardo"):
        load_cluster("nope")


def test_cli_prints_config_errors_without_traceback(in_project, tmp_path):
    path = _write(tmp_path, "e.yaml", EXPERIMENT + "grid: {parallel.precision: [FP16]}\n")
    result = runner.invoke(
        app, ["submit", str(path), "--cluster", "local", "--dry-run", "--results", str(tmp_path / "r")]
    )
    assert result.exit_code == 2
    assert "parallel.precision: Input should be 'BF_16', 'FP_16' or 'FP_32'" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("name", preset_names())
def test_presets_are_valid(name):
    cfg = ModelConfig.from_name(name)
    assert cfg.n_params() > cfg.n_params_non_embedding() > 0
    assert cfg.flops_per_token() > 6 * cfg.n_params_non_embedding()


def test_preset_2_7b_matches_the_seed_shape():
    cfg = ModelConfig.from_name("2.7b")
    assert (cfg.n_layers, cfg.d_model, cfg.seq_len) == (32, 2560, 4096)
    assert 2.5e9 < cfg.n_params() < 2.9e9


def test_preset_override_and_unknown_preset():
    assert ModelConfig.from_name("6.7b", n_layers=4).n_layers == 4
    with pytest.raises(
        ValueError, match=re.escape("'7b' is not a model preset; known presets: tiny, 60m, 125m, 1b, 2.7b")
    ):
        ModelConfig.from_name("7b")


def test_every_shipped_file_is_valid(in_project):
    assert {"leonardo", "marenostrum5", "local"} <= set(available_clusters())
    for path in Path("experiments").glob("*.yaml"):
        load_experiment(path)


@pytest.mark.parametrize(
    "text,pattern",
    [
        (
            'name: "x\\necho INJECTED #"\ntraining: {model: {preset: tiny}, data: {path: d}}\n',
            r"e\.yaml: name: String should match pattern",
        ),
        (
            'name: "a/../../b"\ntraining: {model: {preset: tiny}, data: {path: d}}\n',
            r"name: String should match pattern",
        ),
    ],
)
def test_names_that_could_escape_a_script_or_folder_are_refused(in_project, tmp_path, text, pattern):
    path = _write(tmp_path, "e.yaml", text)
    with pytest.raises(ConfigError, match=pattern):
        load_experiment(path)


def test_model_name_with_a_newline_is_refused(in_project, tmp_path):
    path = _write(tmp_path, "e.yaml", EXPERIMENT.replace("{preset: tiny}", '{preset: tiny, name: "a\\nb"}'))
    with pytest.raises(ConfigError, match=r"model\.name: String should match pattern"):
        expand_experiment(load_experiment(path), load_cluster("local"), str(path))


@pytest.mark.parametrize(
    "extra,pattern",
    [
        ("where: '1/0'\n", r"where: cannot evaluate '1/0': division by zero"),
        ("where: 'model.preset > 3'\n", r"where: .*'model\.preset' is not a key|where: cannot evaluate"),
        ("grid: {resources: [1, 2]}\n", r"resources: must be a mapping"),
    ],
)
def test_bad_where_and_grid_values_are_one_line_errors(in_project, tmp_path, extra, pattern):
    path = _write(tmp_path, "e.yaml", EXPERIMENT + extra)
    with pytest.raises(ConfigError, match=pattern):
        expand_experiment(load_experiment(path), load_cluster("local"), str(path))


def test_where_sees_resolved_defaults(in_project, tmp_path):
    """`train.steps` (a default), `model.n_layers` (from the preset), gpus_per_node (the profile)."""
    path = _write(
        tmp_path,
        "e.yaml",
        EXPERIMENT + "grid: {train.micro_batch_size: [1, 2]}\n"
        "where: 'train.steps == 20 and model.n_layers == 2 and resources.gpus_per_node == 2 "
        "and train.micro_batch_size == 2'\n",
    )
    specs = expand_experiment(load_experiment(path), load_cluster("local"), str(path))
    assert [s.training.train.micro_batch_size for s in specs] == [2]


def test_bad_env_name_in_profile(tmp_path):
    path = _write(tmp_path, "bad.yaml", GOOD_CLUSTER + "env: {A-B: x}\n")
    with pytest.raises(ConfigError, match=r"'A-B' is not a valid shell variable name"):
        load_model(ClusterProfile, path)


def test_hsdp_shard_size_without_hybrid_sharding_is_refused(in_project, tmp_path):
    path = _write(
        tmp_path,
        "e.yaml",
        EXPERIMENT.replace("model: {preset: tiny}", "model: {preset: tiny}\n  parallel: {hsdp_shard_size: 2}"),
    )
    with pytest.raises(
        ConfigError, match=r"parallel: Value error, hsdp_shard_size is only used with sharding: HYBRID_SHARD"
    ):
        expand_experiment(load_experiment(path), load_cluster("local"), str(path))

"""Hostile and broken input: malformed experiments and cluster profiles against `hpcllm submit`.

Each case is one file that is wrong in one way (syntax, types, ranges, enums, injection through a
string that reaches the batch script, a path or the `where` interpreter, resource exhaustion). For
every case `hpcllm submit` must answer with exactly one line that names the file and the key and
says what is allowed, exit non-zero without a traceback, and leave nothing behind: no run directory
rendered, nothing submitted. The scheduler tools are kept off PATH, so a case that slipped through
validation would fail differently (and leave rendered files), never reach a real scheduler.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from hpcllm.cli import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()

PWNED = "/tmp/hpcllm-adversarial-pwned"
INJECT = f"x\ntouch {PWNED}\n#"  # a newline ends a `#SBATCH` comment line: the rest would run


def experiment(**changes: Any) -> dict[str, Any]:
    """A valid experiment for the `advslurm` profile, with ``changes`` merged in (None deletes)."""
    doc: dict[str, Any] = {
        "name": "adv",
        "resources": {"nodes": 1, "time": "00:10:00"},
        "training": {"model": {"preset": "tiny"}, "train": {"steps": 2}, "data": {"path": "data/demo"}},
    }
    return _merged(doc, changes)


def profile(**changes: Any) -> dict[str, Any]:
    """The local SLURM profile renamed `advslurm`, with ``changes`` merged in (None deletes)."""
    doc = yaml.safe_load((ROOT / "clusters" / "localslurm.yaml").read_text())
    doc["name"] = "advslurm"
    return _merged(doc, changes)


def _merged(doc: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    for dotted, value in changes.items():
        *parents, last = dotted.split("/")  # "/" separates levels: grid keys contain dots
        node = doc
        for part in parents:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return doc


def dump(doc: Any) -> str:
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)


LAUGHS = "lol: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"l{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 8)
)


@dataclass(frozen=True)
class Case:
    id: str
    target: str  # "experiment" or "cluster": which file is malformed
    content: str | bytes
    expect: tuple[str, ...]  # fragments of the one error line: the key and what is allowed


EXP = "experiment"
CLU = "cluster"

CASES = [
    # --- syntax and encoding ----------------------------------------------------------------
    Case(
        "unclosed-bracket",
        EXP,
        "name: adv\ntraining: {model: {preset: tiny}\n",
        (":3:1: invalid YAML", "expected ',' or '}'"),
    ),
    Case("tab-indentation", EXP, "name: adv\ntraining:\n\tmodel: {preset: tiny}\n", (":3:1: invalid YAML", "'\\t'")),
    Case(
        "repeated-training-block",
        EXP,
        "name: adv\ntraining:\n  model: {preset: tiny}\n  data: {path: d}\ntraining:\n  seed: 1\n",
        (":5: training: given twice, at lines 2 and 5",),
    ),
    Case(
        "repeated-nested-key",
        EXP,
        "name: adv\ntraining:\n  model: {preset: tiny}\n  data: {path: d}\n  model: {preset: 1b}\n",
        (":5: training.model: given twice, at lines 3 and 5",),
    ),
    Case(
        "latin1-bytes",
        EXP,
        "name: adv\ndescription: caf\xe9\n".encode("latin-1"),
        (":2: not UTF-8 text (byte 0xe9", "save the file as UTF-8"),
    ),
    Case("nul-byte", EXP, "name: adv\x00\n", (":1: invalid YAML: control character U+0000",)),
    Case(
        "python-object-tag",
        EXP,
        "name: !!python/object/apply:os.system ['touch " + PWNED + "']\n",
        (":1:7: invalid YAML", "could not determine a constructor for the tag"),
    ),
    Case("top-level-list", EXP, "- name: adv\n", ("(top level): Input should be a valid dictionary",)),
    # --- schema: missing, unknown, types, ranges, enums ---------------------------------------
    Case("missing-name", EXP, dump(experiment(name=None)), ("name: Field required",)),
    Case(
        "misspelt-section",
        EXP,
        dump(experiment(trainig={"seed": 1})),
        ("trainig: unknown key; allowed keys here: name, description, resources, training",),
    ),
    Case(
        "nodes-not-a-number",
        EXP,
        dump(experiment(**{"resources/nodes": "two"})),
        ("resources.nodes: Input should be a valid integer", "(got 'two')"),
    ),
    Case(
        "nodes-zero",
        EXP,
        dump(experiment(**{"resources/nodes": 0})),
        ("resources.nodes: Input should be greater than 0",),
    ),
    Case(
        "steps-negative",
        EXP,
        dump(experiment(**{"training/train/steps": -5})),
        ("train.steps: Input should be greater than 0", "(got -5)"),
    ),
    Case(
        "sharding-enum",
        EXP,
        dump(experiment(**{"training/parallel/sharding": "FULL"})),
        ("parallel.sharding: Input should be 'FULL_SHARD', 'HYBRID_SHARD' or 'NO_SHARD'",),
    ),
    Case(
        "precision-enum-in-grid",
        EXP,
        dump(experiment(grid={"parallel.precision": ["FP_8"]})),
        ("point {parallel.precision=FP_8}: parallel.precision: Input should be 'BF_16', 'FP_16' or 'FP_32'",),
    ),
    Case(
        "unknown-preset",
        EXP,
        dump(experiment(**{"training/model/preset": "70b"})),
        ("model: Value error, '70b' is not a model preset; known presets: tiny, 60m, 125m",),
    ),
    Case(
        "time-words",
        EXP,
        dump(experiment(**{"resources/time": "30 minutes"})),
        ("resources.time: Value error, '30 minutes' is not a time; use [D-]HH:MM:SS",),
    ),
    Case(
        "lr-infinite",
        EXP,
        "name: adv\ntraining:\n  optim: {lr: .inf}\n  data: {path: d}\n",
        (":3: training.optim.lr: .inf is not a finite number",),
    ),
    Case(
        "steps-huge-integer",
        EXP,
        "name: adv\ntraining:\n  train: {steps: " + "9" * 5000 + "}\n",
        (":3: training.train.steps: an integer of 5000 characters; no setting needs more than 30",),
    ),
    Case(
        # 20 digits pass the length cap but no C type holds them: torch.manual_seed would crash the job
        "seed-beyond-int64",
        EXP,
        "name: adv\ntraining:\n  seed: 99999999999999999999\n  data: {path: d}\n",
        (":3: training.seed: 99999999999999999999 is out of range; integers must lie in [-2**63, 2**63 - 1]",),
    ),
    Case(
        "grid-value-beyond-int64",
        EXP,
        "name: adv\ntraining:\n  data: {path: d}\ngrid:\n  train.steps: [1, -0x8000000000000001]\n",
        (":5: grid.train.steps.1: -0x8000000000000001 is out of range",),
    ),
    Case(
        "impossible-date",
        EXP,
        dump(experiment()).replace("time: 00:10:00", "time: 2024-13-45"),
        ("resources.time: '2024-13-45' is not a valid timestamp",),
    ),
    Case(
        "too-many-nodes",
        EXP,
        dump(experiment(**{"resources/nodes": 5})),
        ("resources.nodes: 5 nodes requested, but cluster 'advslurm' has at most 4",),
    ),
    Case(
        "global-batch-arithmetic",
        EXP,
        dump(experiment(**{"training/train/global_batch_size": 7})),
        ("train.global_batch_size: 7 != micro_batch_size (2) x grad_accum (1) x data-parallel size (1) = 2",),
    ),
    Case(
        "zip-unequal",
        EXP,
        dump(experiment(zip=[{"train.steps": [1, 2], "seed": [1]}])),
        ("zip: group lists must have equal lengths (train.steps: 2, seed: 1)",),
    ),
    Case(
        "reference-unknown-metric",
        EXP,
        dump(experiment(expected={"advslurm": {"speed": [1, -0.1, None]}})),
        ("expected.advslurm.speed: not a checkable metric",),
    ),
    # --- injection: shell, paths, the where interpreter -----------------------------------
    Case(
        "name-path-traversal",
        EXP,
        dump(experiment(name="../../etc")),
        ("name: String should match pattern", "(got '../../etc')"),
    ),
    Case("name-shell", EXP, dump(experiment(name="x; rm -rf ~")), ("name: String should match pattern",)),
    Case(
        "model-name-substitution",
        EXP,
        dump(experiment(**{"training/model/name": "x$(reboot)"})),
        ("model.name: String should match pattern",),
    ),
    Case(
        "qos-newline",
        EXP,
        dump(experiment(**{"resources/qos": INJECT})),
        ("resources.qos: Value error, must be one line of printable text; found '\\n'",),
    ),
    Case(
        "time-newline",
        EXP,
        dump(experiment(**{"resources/time": "00:10:00\ntouch " + PWNED})),
        ("resources.time:", "is not a time; use [D-]HH:MM:SS"),
    ),
    Case(
        "grid-key-outside-config",
        EXP,
        dump(experiment(grid={"os.system": ["touch"]})),
        ("grid: Value error, grid key 'os.system' must start with one of: resources, run_id, seed",),
    ),
    Case(
        "grid-key-dunder",
        EXP,
        dump(experiment(grid={"model.__class__": ["x"]})),
        ("model.__class__: unknown key; allowed keys here: name, vocab_size",),
    ),
    Case(
        "where-call",
        EXP,
        dump(experiment(where=f"__import__('os').system('touch {PWNED}')")),
        ("where: Call is not allowed in",),
    ),
    Case(
        "where-attribute-escape",
        EXP,
        dump(experiment(where="resources.__class__ == 1")),
        ("where: 'resources.__class__' is not a key of the resolved config",),
    ),
    Case(
        "where-memory-bomb",
        EXP,
        dump(experiment(where="'x' * 10000000000 == 'y'")),
        ("where: arithmetic needs numbers, got 'x'",),
    ),
    Case("where-power", EXP, dump(experiment(where="seed ** 99999999 > 0")), ("where: BinOp is not allowed in",)),
    Case(
        "where-too-long",
        EXP,
        dump(experiment(where="seed > 0 and " * 60 + "True")),
        ("where: an expression of 784 characters; at most 500",),
    ),
    # --- resource exhaustion ---------------------------------------------------------------
    Case("billion-laughs", EXP, LAUGHS, (":5: l4: expands to more than 100,000 values",)),
    Case("recursive-alias", EXP, "name: &n [adv, *n]\n", (":1: name.1: an alias refers to a node that contains it",)),
    Case(
        "deep-nesting",
        EXP,
        "name: adv\ntraining: " + "[" * 5000 + "]" * 5000 + "\n",
        (":2: lists and mappings nested more than 32 levels deep",),
    ),
    Case(
        "huge-grid",
        EXP,
        dump(
            experiment(
                grid={
                    "seed": list(range(100)),
                    "train.steps": list(range(1, 101)),
                    "optim.lr": [0.1 * i for i in range(1, 101)],
                    "train.micro_batch_size": list(range(1, 101)),
                }
            )
        ),
        (
            "grid: 100 (seed) x 100 (train.steps) x 100 (optim.lr) x 100 (train.micro_batch_size) = 100,000,000 "
            "points; at most 10,000",
        ),
    ),
    Case(
        "file-too-large", EXP, "name: adv\ndescription: '" + "x" * (1 << 20) + "'\n", ("larger than 1,048,576 bytes",)
    ),
    # --- cluster profiles ------------------------------------------------------------------
    Case("profile-syntax", CLU, "name: advslurm\nscheduler: [slurm\n", ("invalid YAML",)),
    Case(
        "profile-scheduler-enum",
        CLU,
        dump(profile(scheduler="pbs")),
        ("scheduler: Input should be 'slurm' or 'local'",),
    ),
    Case("profile-gpus-zero", CLU, dump(profile(gpus_per_node=0)), ("gpus_per_node: Input should be greater than 0",)),
    Case(
        "profile-signal-type",
        CLU,
        dump(profile(signal_before_end_s="soon")),
        ("signal_before_end_s: Input should be a valid integer",),
    ),
    Case("profile-repeated-key", CLU, dump(profile()) + "partition: other\n", ("partition: given twice, at lines",)),
    Case("profile-name-traversal", CLU, dump(profile(name="../advslurm")), ("name: String should match pattern",)),
    Case(
        "profile-partition-newline",
        CLU,
        dump(profile(partition=INJECT)),
        ("partition: Value error, must be one line of printable text; found '\\n'",),
    ),
    Case(
        "profile-gres-newline",
        CLU,
        dump(profile(gres="gpu:4\ntouch " + PWNED)),
        ("gres: Value error, must be one line",),
    ),
    Case("profile-mem-newline", CLU, dump(profile(mem="0\ntouch " + PWNED)), ("mem: Value error, must be one line",)),
    Case("profile-account-newline", CLU, dump(profile(account=INJECT)), ("account: Value error, must be one line",)),
    Case(
        "profile-python-newline",
        CLU,
        dump(profile(python="python\ntouch " + PWNED)),
        ("python: Value error, must be one line",),
    ),
    Case(
        "profile-module-newline",
        CLU,
        dump(profile(modules=["gcc", INJECT])),
        ("modules.1: Value error, must be one line",),
    ),
    Case(
        "profile-sbatch-extra-newline",
        CLU,
        dump(profile(sbatch_extra=["--constraint=x\ntouch " + PWNED])),
        ("sbatch_extra.0: Value error, must be one line",),
    ),
    Case(
        "profile-sbatch-extra-not-an-option",
        CLU,
        dump(profile(sbatch_extra=["touch " + PWNED])),
        (
            "sbatch_extra.0: Value error, 'touch",
            "is not an sbatch option; write it as on the command line",
        ),
    ),
    Case(
        "profile-env-name-injection",
        CLU,
        dump(profile(env={"X=1; touch " + PWNED + "; Y": "1"})),
        (
            "env: 'X=1; touch",
            "is not a valid shell variable name (ASCII letters, digits, _",
        ),
    ),
    Case(
        "profile-env-name-unicode", CLU, dump(profile(env={"é": "1"})), ("env: 'é' is not a valid shell variable name",)
    ),
    Case(
        "profile-qos-name-newline",
        CLU,
        dump(profile(qos={INJECT: {"max_time": "01:00:00"}})),
        (
            "qos.'x\\ntouch",
            ".(key): Value error, must be one line",
        ),
    ),
    Case(
        "profile-template-traversal",
        CLU,
        dump(profile(template="../../etc/passwd")),
        ("template: String should match pattern",),
    ),
    Case(
        "profile-default-qos-unknown",
        CLU,
        dump(profile(default_qos="fast")),
        ("default_qos 'fast' is not one of the qos names: (none)",),
    ),
    Case(
        "profile-billion-laughs",
        CLU,
        dump(profile()) + LAUGHS.replace("lol:", "x_lol:"),
        ("expands to more than 100,000 values",),
    ),
]


def test_the_set_is_large_and_covers_both_files() -> None:
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)
    assert sum(c.target == CLU for c in CASES) >= 10


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder with the `advslurm` profile; no sbatch/squeue reachable (PATH)."""
    clusters = tmp_path / "clusters"
    clusters.mkdir()
    (clusters / "advslurm.yaml").write_text(dump(profile()))
    monkeypatch.setenv("HPCLLM_CLUSTERS_DIR", str(clusters))
    monkeypatch.delenv("HPCLLM_ACCOUNT", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_malformed_file_gives_one_clear_line_and_leaves_nothing(workspace: Path, case: Case) -> None:
    exp_file = workspace / "exp.yaml"
    bad_file = exp_file if case.target == EXP else workspace / "clusters" / "advslurm.yaml"
    if case.target == CLU:
        exp_file.write_text(dump(experiment()))
    if isinstance(case.content, bytes):
        bad_file.write_bytes(case.content)
    else:
        bad_file.write_text(case.content)
    results = workspace / "results"

    result = runner.invoke(
        app,
        ["submit", str(exp_file), "--cluster", "advslurm", "--results", str(results)],
        env={"PATH": "/nonexistent", "COLUMNS": "80"},
    )

    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # no crash, no traceback
    assert "Traceback" not in result.output
    assert len(lines) == 1, result.output
    assert lines[0].startswith(f"error: {bad_file}"), lines[0]
    for fragment in case.expect:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    assert not results.exists() or not any(results.rglob("*")), "something was rendered"
    assert not Path(PWNED).exists()


@pytest.mark.parametrize("how", ["option", "environment"])
def test_an_account_from_the_command_line_or_environment_is_checked_too(workspace: Path, how: str) -> None:
    (workspace / "exp.yaml").write_text(dump(experiment()))
    args = ["submit", str(workspace / "exp.yaml"), "--cluster", "advslurm", "--results", str(workspace / "results")]
    env = {"PATH": "/nonexistent"}
    if how == "option":
        args += ["--account", INJECT]
    else:
        env["HPCLLM_ACCOUNT"] = INJECT
    result = runner.invoke(app, args, env=env)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "account 'x\\ntouch /tmp/hpcllm-adversarial-pwned\\n#': must be one line of printable text" in lines[0]
    assert not (workspace / "results").exists()

"""Generated hostile input at the boundaries (issue 18), with hypothesis.

- Run folders built from random subsets of files, each damaged or not (truncated, not UTF-8, JSON of
  another shape, a string where a number belongs, non-finite numbers, a directory, a FIFO or a link
  loop where a file belongs): ``collect``, ``status`` and ``report`` never raise and never hang, report
  every good run and warn once per bad one; ``--format json`` stays strict JSON.
- Valid experiments and profiles with one value replaced by a hostile one: accepted, or refused with
  a ConfigError whose first line names the file.
- Names and pointers that try to leave their folder: refused, or inside it after resolution.

Example counts are bounded and derandomized (the ``boundaries`` profile in conftest.py), so the
suite stays fast and every run tries the same examples.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from collect_support import table_summary
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from hpcllm.checkpoint_layout import LATEST, CheckpointCorrupt, read_latest_pointer
from hpcllm.cli import app
from hpcllm.config.cluster import load_cluster
from hpcllm.config.experiment import load_experiment
from hpcllm.errors import ConfigError, HpcllmError
from hpcllm.plan.expand import expand_experiment
from hpcllm.rundir import check_name, contained

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
pytestmark = pytest.mark.timeout(300)  # a blocking open of a FIFO would hang: fail instead

GOOD_SUMMARY = table_summary(final_loss=3.2, wall_time_s=3725.4, tokens_per_s_per_gpu=1234.5)
NUMERIC = ["world_size", "samples_per_s", "mfu", "final_loss", "seq_len", "n_params"]
COUNTS = ["world_size", "grad_accum", "micro_batch_size", "global_batch_size", "seq_len", "n_params"]
# A good run may hold a non-finite measurement (a run stopped by a non-finite loss): shown, never a crash.
MEASURED = ["mfu", "final_loss", "samples_per_s", "wall_time_s", "tokens_per_s_per_gpu"]
TEXT = ["status", "precision", "sharding", "gpu_type"]


def _manifest(run_id: str) -> dict[str, Any]:
    return {"run_id": run_id, "experiment": "exp", "cluster": "cl", "backend": "local", "state": "completed"}


# --- damage ------------------------------------------------------------------------------------

# How a file can be damaged; every one of them makes the file unusable (a bad run).
DAMAGES = [
    "truncated",
    "empty",
    "not_utf8",
    "array",
    "scalar",
    "wrong_type",
    "directory",
    "fifo",
    "link_loop",
    "deep",
    "bad_count",
]


def _write_damaged(path: Path, good: dict[str, Any], damage: str, data: st.DataObject, fields: list[str]) -> None:
    text = json.dumps(good)
    if damage == "truncated":
        path.write_text(text[: data.draw(st.integers(1, len(text) - 1), label="cut")])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "not_utf8":
        path.write_bytes(data.draw(st.sampled_from([b"\xff\xfe", b"\x80", b"\xc3("]), label="bytes") + text.encode())
    elif damage == "array":
        path.write_text(json.dumps([good]))
    elif damage == "scalar":
        path.write_text(data.draw(st.sampled_from(["42", "null", '"completed"', "true", "NaN"]), label="scalar"))
    elif damage == "wrong_type":
        key = data.draw(st.sampled_from(fields), label="field")
        wrong = data.draw(st.sampled_from(["fast", [1, 2], {"a": 1}, True] if key in NUMERIC else [5, [1], {"a": 1}]))
        path.write_text(json.dumps({**good, key: wrong}))
    elif damage == "bad_count":  # a number, but no count: readers int() it (1e400 parses as infinity)
        key = data.draw(st.sampled_from(COUNTS), label="count")
        wrong = data.draw(st.sampled_from(["1e400", "-1e400", "NaN", "Infinity", "-1", "2.5", "1e30"]), label="value")
        path.write_text(json.dumps({**good, key: "@"}).replace('"@"', wrong))
    elif damage == "directory":
        path.mkdir()
    elif damage == "fifo":
        os.mkfifo(path)
    elif damage == "link_loop":
        path.symlink_to(path.name)  # the link points at itself: ELOOP
    elif damage == "deep":
        path.write_text("[" * 100_000)
    else:  # pragma: no cover - the list above is the strategy
        raise AssertionError(damage)


def _noise(path: Path, data: st.DataObject, special: bool) -> None:
    """Garbage in a file that is read only in part (metrics.jsonl, runtime.jsonl): it must not matter."""
    kind = data.draw(
        st.sampled_from(["lines", "bytes", "nan_loss", "none"] + (["fifo", "directory"] if special else []))
    )
    if kind == "lines":
        lines = data.draw(
            st.lists(st.sampled_from(['{"step": 1, "loss": 2.5}', '{"step": "x"}', "[1]", "{", '"s"']), max_size=6)
        )
        path.write_text("\n".join(lines))
    elif kind == "bytes":
        path.write_bytes(data.draw(st.binary(max_size=200), label="bytes"))
    elif kind == "nan_loss":
        path.write_text('{"step": 3, "loss": NaN}\n{"step": 4, "loss": Infinity}\n')
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()


def _make_run(root: Path, name: str) -> Path:
    run = root / "exp" / "cl" / name
    run.mkdir(parents=True)
    (run / "run.yaml").write_text("run_id: x\n")
    return run


def _strict_json(text: str) -> Any:
    def refuse(constant: str) -> None:
        raise AssertionError(f"--format json wrote {constant}, which is not JSON")

    return json.loads(text, parse_constant=refuse)


def _warning_count(stderr: str, path: Path) -> int:
    return sum(str(path) in line for line in stderr.splitlines())


RUNS = st.lists(st.booleans(), min_size=1, max_size=4)  # True: a good run


@settings(max_examples=40, suppress_health_check=[HealthCheck.too_slow])  # ~0.2-0.9 s each
@given(runs=RUNS, data=st.data())
def test_collect_reports_good_runs_and_warns_once_per_bad(runs: list[bool], data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        good, bad = [], []
        for i, is_good in enumerate(runs):
            run = _make_run(root, f"run{i}")
            if is_good:
                summary = dict(GOOD_SUMMARY)
                if data.draw(st.booleans(), label="non-finite"):
                    key = data.draw(st.sampled_from(MEASURED), label="measured")
                    summary[key] = data.draw(st.sampled_from([float("nan"), float("inf"), -float("inf")]))
                (run / "summary.json").write_text(json.dumps(summary))
                good.append(run)
            else:
                _write_damaged(
                    run / "summary.json", GOOD_SUMMARY, data.draw(st.sampled_from(DAMAGES)), data, NUMERIC + TEXT
                )
                bad.append(run)
            _noise(run / "metrics.jsonl", data, special=True)
            _noise(run / "manifest.json", data, special=True)  # read for the restarts column only
        if data.draw(st.booleans(), label="loop"):
            (root / "exp" / "loop").symlink_to(root)
        fmt = data.draw(st.sampled_from(["csv", "json", "markdown", "latex"]), label="format")
        columns = data.draw(st.sampled_from(["seed,run", "all"]), label="columns")  # all: every formatter
        result = runner.invoke(app, ["collect", "-r", str(root), "-f", fmt, "--columns", columns])
        # No good run: one line saying none completed, exit 2 (hpcllm.collect.empty); the bad ones still warned.
        assert result.exit_code == (0 if good else 2), result.output
        if not good:
            assert "none completed" in result.stderr, result.stderr
        assert result.exception is None or isinstance(result.exception, SystemExit)
        if fmt == "json":
            rows = _strict_json(result.stdout)
            assert sorted(r["Run"] for r in rows) == sorted(r.name for r in good)
        else:
            for run in good:
                assert run.name in result.stdout
        for run in bad:
            assert _warning_count(result.stderr, run / "summary.json") == 1, result.stderr
            assert run.name not in result.stdout
        assert "Traceback" not in result.output


@settings(max_examples=40, suppress_health_check=[HealthCheck.too_slow])  # ~0.2-0.9 s each
@given(runs=RUNS, data=st.data())
def test_status_lists_every_run_and_warns_once_per_bad_manifest(runs: list[bool], data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bad = []
        for i, is_good in enumerate(runs):
            run = _make_run(root, f"run{i}")
            if is_good:
                if data.draw(st.booleans(), label="has manifest"):
                    (run / "manifest.json").write_text(json.dumps(_manifest(run.name)))
            else:
                damage = data.draw(st.sampled_from(DAMAGES))
                _write_damaged(run / "manifest.json", _manifest(run.name), damage, data, ["run_id", "state"])
                bad.append(run)
            _noise(run / "metrics.jsonl", data, special=True)
            _noise(run / "runtime.jsonl", data, special=True)
        result = runner.invoke(app, ["status", str(root), "--format", "json"])
        assert result.exit_code == 0, result.output
        listed = _strict_json(result.stdout)
        assert sorted(r["run_id"] for r in listed) == [f"run{i}" for i in range(len(runs))]
        for run in bad:
            assert _warning_count(result.stderr, run / "manifest.json") == 1, result.stderr
        assert "Traceback" not in result.output
        table = runner.invoke(app, ["status", str(root)], env={"COLUMNS": "300"})
        assert table.exit_code == 0 and "Traceback" not in table.output, table.output


@settings(max_examples=6, suppress_health_check=[HealthCheck.too_slow])  # a report draws plots: 1.5-12 s each
@given(runs=RUNS, data=st.data())
def test_report_shows_good_runs_and_warns_once_per_bad(runs: list[bool], data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "results"
        good, bad = [], []
        for i, is_good in enumerate(runs):
            run = _make_run(root, f"run{i}")
            (run / "manifest.json").write_text(json.dumps(_manifest(run.name)))
            if is_good:
                summary = dict(GOOD_SUMMARY)
                if data.draw(st.booleans(), label="non-finite"):
                    summary[data.draw(st.sampled_from(MEASURED), label="measured")] = float("inf")
                (run / "summary.json").write_text(json.dumps(summary))
                good.append(run)
            else:
                _write_damaged(
                    run / "summary.json", GOOD_SUMMARY, data.draw(st.sampled_from(DAMAGES)), data, NUMERIC + TEXT
                )
                bad.append(run)
            _noise(run / "metrics.jsonl", data, special=False)
            _noise(run / "slurm-1.out", data, special=True)
        out = Path(tmp) / "report.html"
        result = runner.invoke(app, ["report", str(root), "-o", str(out)])
        assert result.exit_code == 0, result.output
        html = out.read_text()
        for run in good:
            assert run.name in html
        for run in bad:
            assert _warning_count(result.stderr, run / "summary.json") == 1, result.stderr
        assert "Traceback" not in result.output


# --- configs -----------------------------------------------------------------------------------

HOSTILE = st.one_of(
    st.sampled_from(
        ["inf", "-inf", "nan", ".inf", "1e400", "../x", "/etc/passwd", "", " ", "a\nb", "${HOME}", "[bold]x[/]"]
    ),
    st.sampled_from(
        [float("inf"), float("nan"), -1, 0, 10**40, 2**63, -(2**63) - 1, True, None, [], {}, [1, "a"], {"a": None}]
    ),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
EXPERIMENT_KEYS = [
    "name",
    "resources.nodes",
    "resources.gpus_per_node",
    "resources.time",
    "training.seed",
    "training.model.preset",
    "training.train.steps",
    "training.train.micro_batch_size",
    "training.optim.lr",
    "training.optim.weight_decay",
    "training.schedule.warmup_steps",
    "training.data.path",
    "training.eval.samples",
    "training.checkpoint.every_steps",
    "where",
]
PROFILE_KEYS = [
    "name",
    "gpus_per_node",
    "cpus_per_node",
    "gpu_memory_gib",
    "max_nodes",
    "signal_before_end_s",
    "python",
]


def _set(doc: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    node = doc
    *parents, last = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return doc


def _refusal_is_one_clear_line(exc: HpcllmError, source: Path) -> None:
    first = str(exc).splitlines()[0]
    assert str(source) in first or source.name in first, str(exc)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(EXPERIMENT_KEYS), value=HOSTILE)
def test_a_mutated_experiment_is_accepted_or_refused_in_one_line(key: str, value: Any) -> None:
    base = yaml.safe_load((ROOT / "experiments" / "smoke.yaml").read_text())
    cluster = load_cluster(str(ROOT / "clusters" / "local.yaml"))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "exp.yaml"
        path.write_text(yaml.safe_dump(_set(base, key, value)))
        try:
            specs = expand_experiment(load_experiment(path), cluster, str(path))
        except ConfigError as exc:
            _refusal_is_one_clear_line(exc, path)
            return
        for spec in specs:  # accepted: every value finite, every run folder a plain name
            assert "nan" not in json.dumps(spec.training.model_dump(mode="json")).lower().replace("nano", "")
            check_name(spec.run_id, "run id")
            check_name(spec.experiment, "experiment")


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(PROFILE_KEYS), value=HOSTILE)
def test_a_mutated_profile_is_accepted_or_refused_in_one_line(key: str, value: Any) -> None:
    base = yaml.safe_load((ROOT / "clusters" / "leonardo.yaml").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "prof.yaml"
        path.write_text(yaml.safe_dump(_set(base, key, value)))
        try:
            profile = load_cluster(str(path))
        except ConfigError as exc:
            _refusal_is_one_clear_line(exc, path)
            return
        check_name(profile.name, "cluster name")


# --- containment -------------------------------------------------------------------------------

NAMES = st.one_of(
    st.sampled_from(["..", ".", "../x", "a/../../b", "/abs", "a/b", "", "x\x00y", "ok", "ok.2", "-x", "~", "$HOME"]),
    st.text(alphabet=st.sampled_from("./a-_~$\n\\"), max_size=8),
    # one path component holds at most 255 bytes: longer is ENAMETOOLONG at the first mkdir
    st.builds(lambda c, n: c * n, st.sampled_from(["x", "\u00e9", "\u6f22"]), st.integers(80, 300)),
)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(name=NAMES)
def test_a_name_is_one_folder_inside_its_root_or_refused(name: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "results"
        root.mkdir()
        try:
            check_name(name, "account")
        except ConfigError as exc:
            assert "account" in str(exc) and "\n" not in str(exc).replace(repr(name), "")
            return
        path = contained(root, name, "account")  # a name that passed stays inside after resolution
        assert os.path.realpath(path).startswith(os.path.realpath(root) + os.sep)
        assert Path(path).parent == root
        Path(path).mkdir()  # and it is a folder name the file system takes


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(account=NAMES)
def test_an_account_never_moves_a_storage_root(account: str) -> None:
    profile = load_cluster(str(ROOT / "clusters" / "leonardo.yaml"))
    try:
        roots = profile.storage_roots(account)
    except ConfigError:
        return
    base = profile.paths["work"].split("{account}")[0]
    assert os.path.normpath(roots["work"]).startswith(os.path.normpath(base))


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(pointer=st.one_of(NAMES, st.sampled_from(["step_2", "step_1", "step_2/", "./step_2", "step_02", "step_3"])))
def test_latest_names_a_step_folder_of_its_own_checkpoints_or_is_refused(pointer: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ckpts = Path(tmp) / "run" / "checkpoints"
        (ckpts / "step_2").mkdir(parents=True)
        (Path(tmp) / "other" / "checkpoints" / "step_1").mkdir(parents=True)
        (ckpts / LATEST).write_text(pointer)
        try:
            chosen = read_latest_pointer(ckpts)
        except CheckpointCorrupt:
            return
        assert chosen is not None
        assert os.path.dirname(os.path.realpath(chosen)) == os.path.realpath(ckpts)

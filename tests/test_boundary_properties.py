"""Generated hostile input at the boundaries (issue 18), with hypothesis.

- Run folders built from random subsets of files, each damaged or not (truncated, not UTF-8, JSON of
  another shape, a string where a number belongs, non-finite numbers, a directory, a FIFO or a link
  loop where a file belongs; torn, non-object or wrong-typed lines in metrics.jsonl/runtime.jsonl;
  files of mode 000/0300, run folders of mode 000, another user's experiment of mode 0700):
  ``collect``, ``status`` and ``report`` never raise and never hang, report every good run and warn
  once per bad one (naming the file or folder, and "permission" for what may not be read);
  ``--format json`` stays strict JSON. The commands run as nobody (unprivileged_support.py): root
  reads any file, whatever its mode.
- Valid experiments and profiles with one to three values replaced by hostile ones: accepted, or
  refused with one ConfigError line that names the file.
- Names and pointers that try to leave their folder: refused, or inside it after resolution.

Example counts are bounded and derandomized (the ``boundaries`` profile in conftest.py), so the
suite stays fast and every run tries the same examples.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from collect_support import table_summary
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner
from unprivileged_support import Outcome, foreign, hand_over, invoke_unprivileged

from hpcllm.checkpoint_layout import LATEST, CheckpointCorrupt, read_latest_pointer
from hpcllm.cli import app
from hpcllm.config.cluster import load_cluster
from hpcllm.config.experiment import load_experiment
from hpcllm.errors import ConfigError, HpcllmError
from hpcllm.plan.expand import expand_experiment
from hpcllm.rundir import check_name, contained

ROOT = Path(__file__).resolve().parents[1]
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
# How a file or its run folder can be closed to its user (run as nobody: see unprivileged_support.py).
UNREADABLE = ["mode_000", "mode_0300", "folder_000"]


@dataclass(frozen=True)
class Bad:
    """Where a bad run's one warning line points: the damaged file, or the folder nobody may list."""

    path: Path
    unreadable: bool = False  # then the line says so


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
    else:
        _write_special(path, damage)


def _write_special(path: Path, damage: str) -> None:
    """Something that is not a readable file where one belongs."""
    if damage == "directory":
        path.mkdir()
    elif damage == "fifo":
        os.mkfifo(path)
    elif damage == "link_loop":
        path.symlink_to(path.name)  # the link points at itself: ELOOP
    elif damage == "deep":
        path.write_text("[" * 100_000)
    else:  # pragma: no cover - the lists above are the strategies
        raise AssertionError(damage)


def _close(run: Path, name: str, content: str, damage: str) -> Bad:
    """``run/name`` holding ``content``, closed to its owner by ``damage`` (one of UNREADABLE)."""
    path = run / name
    path.write_text(content)
    if damage == "folder_000":
        run.chmod(0)
        return Bad(run, unreadable=True)
    path.chmod(0 if damage == "mode_000" else 0o300)
    return Bad(path, unreadable=True)


def _damage(run: Path, name: str, good: dict[str, Any], damage: str, data: st.DataObject, fields: list[str]) -> Bad:
    if damage in UNREADABLE:
        return _close(run, name, json.dumps(good), damage)
    _write_damaged(run / name, good, damage, data, fields)
    return Bad(run / name)


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
    elif kind in ("fifo", "directory"):
        _write_special(path, kind)


# --- run folders -------------------------------------------------------------------------------


@contextmanager
def _results_tree() -> Iterator[Path]:
    """An empty results root in a temporary folder that the unprivileged user may enter."""
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp).chmod(0o755)
        yield Path(tmp) / "results"


def _make_run(root: Path, name: str, experiment: str = "exp") -> Path:
    run = root / experiment / "cl" / name
    run.mkdir(parents=True)
    (run / "run.yaml").write_text("run_id: x\n")
    return run


def _summary_runs(root: Path, runs: list[bool], data: st.DataObject) -> tuple[list[Path], dict[Path, Bad]]:
    """A run folder under ``root`` per entry of ``runs``: a good summary.json for True (a number in it
    may be non-finite: a value, not damage; the folder may be search-only, mode 0300, which hides
    nothing read by name), a damaged or unreadable one (or a run folder its user may not enter) for
    False. Returns (the good runs, {bad run: where its one warning points})."""
    good: list[Path] = []
    bad: dict[Path, Bad] = {}
    for i, is_good in enumerate(runs):
        run = _make_run(root, f"run{i}")
        if not is_good:
            damage = data.draw(st.sampled_from([*DAMAGES, *UNREADABLE]), label="damage")
            bad[run] = _damage(run, "summary.json", GOOD_SUMMARY, damage, data, NUMERIC + TEXT)
            continue
        summary = dict(GOOD_SUMMARY)
        if data.draw(st.booleans(), label="non-finite"):
            key = data.draw(st.sampled_from(MEASURED), label="measured")
            summary[key] = data.draw(st.sampled_from([float("nan"), float("inf"), -float("inf")]))
        (run / "summary.json").write_text(json.dumps(summary))
        if data.draw(st.booleans(), label="search-only folder"):
            run.chmod(0o300)
        good.append(run)
    return good, bad


def _another_users_experiment(root: Path, data: st.DataObject) -> Bad | None:
    """Maybe an experiment folder of another user's (umask 077), holding a completed run: it must be
    said to be left out, once, and none of it reported."""
    if not data.draw(st.booleans(), label="another user's experiment"):
        return None
    run = _make_run(root, "theirs", experiment="other")
    (run / "summary.json").write_text(json.dumps(GOOD_SUMMARY))
    (run / "manifest.json").write_text(json.dumps(_manifest(run.name)))
    foreign(root / "other")
    return Bad(root / "other", unreadable=True)


def _enterable(run: Path, bad: dict[Path, Bad]) -> bool:
    """Whether the run's user may enter its folder (a bad run's may be closed: then it holds nothing more)."""
    return run not in bad or bad[run].path != run


def _strict_json(text: str) -> Any:
    def refuse(constant: str) -> None:
        raise AssertionError(f"--format json wrote {constant}, which is not JSON")

    return json.loads(text, parse_constant=refuse)


def _lines_naming(stderr: str, path: Path) -> list[str]:
    """The lines of ``stderr`` about ``path`` (``<path>: <reason>``) or a file below it."""
    return [line for line in stderr.splitlines() if f"{path}:" in line or f"{path}{os.sep}" in line]


def _says_once(stderr: str, bad: Bad) -> None:
    """Exactly one line names ``bad.path``; for a file or folder its user may not read, it says so."""
    lines = _lines_naming(stderr, bad.path)
    assert len(lines) == 1, (bad, stderr)
    if bad.unreadable:
        assert "permission" in lines[0].lower(), lines[0]


def _run_as_nobody(tree: Path, args: list[str], env: dict[str, str] | None = None) -> Outcome:
    """The command as an unprivileged user, over a tree handed to that user; no traceback, ever."""
    hand_over(tree)
    result = invoke_unprivileged(args, env)
    assert result.exception is None, result.output
    assert "Traceback" not in result.output, result.output
    return result


RUNS = st.lists(st.booleans(), min_size=1, max_size=4)  # True: a good run


@settings(max_examples=40, suppress_health_check=[HealthCheck.too_slow])  # ~0.2-0.9 s each
@given(runs=RUNS, data=st.data())
def test_collect_reports_good_runs_and_warns_once_per_bad(runs: list[bool], data: st.DataObject) -> None:
    with _results_tree() as root:
        good, bad = _summary_runs(root, runs, data)
        for run in [*good, *bad]:
            if _enterable(run, bad):
                _noise(run / "metrics.jsonl", data, special=True)
                _noise(run / "manifest.json", data, special=True)  # read for the restarts column only
        if data.draw(st.booleans(), label="loop"):
            (root / "exp" / "loop").symlink_to(root)
        theirs = _another_users_experiment(root, data)
        fmt = data.draw(st.sampled_from(["csv", "json", "markdown", "latex"]), label="format")
        columns = data.draw(st.sampled_from(["seed,run", "all"]), label="columns")  # all: every formatter
        result = _run_as_nobody(root.parent, ["collect", "-r", str(root), "-f", fmt, "--columns", columns])
        # No good run: one line saying none completed, or that none could be read, exit 2
        # (hpcllm.collect.empty); the bad ones still warned.
        assert result.exit_code == (0 if good else 2), result.output
        if not good:
            any_read = any(_enterable(run, bad) for run in bad)
            said = "none completed" if any_read else "no run directory in what this user may read"
            assert said in result.stderr, result.stderr
        elif fmt == "json":
            rows = _strict_json(result.stdout)
            assert sorted(r["Run"] for r in rows) == sorted(r.name for r in good)
        else:
            for run in good:
                assert run.name in result.stdout
        for run, where in bad.items():
            _says_once(result.stderr, where)
            assert run.name not in result.stdout
        for run in good:
            assert not _lines_naming(result.stderr, run / "summary.json"), result.stderr
        if theirs:
            _says_once(result.stderr, theirs)
            assert "theirs" not in result.stdout


# Damage to a JSON-lines log that status reads the tail of: every one is a bad run.
JSONL_DAMAGES = ["torn", "not_object", "wrong_type", "non_finite_step", "directory", "fifo", "link_loop"]
GOOD_METRICS = '{"step": 1, "loss": 2.5, "lr": 0.001}\n{"step": 2, "eval_loss": 2.6}\n'
GOOD_RUNTIME = '{"restart": 0, "world_size": 2, "software": {"torch": "2.5"}, "ranks": [{}], "nodes": ["n1"]}\n'


def _damaged_log(path: Path, damage: str, data: st.DataObject) -> None:
    good = GOOD_METRICS if path.name == "metrics.jsonl" else GOOD_RUNTIME
    if damage == "torn":  # a writer died in the middle line; a later attempt wrote the last
        path.write_text(good + '{"step": 3, "lo\n' + good.splitlines()[0] + "\n")
    elif damage == "not_object":
        path.write_text(good + data.draw(st.sampled_from(["[1]", '"s"', "42", "null"]), label="line") + "\n")
    elif damage == "wrong_type":
        keys = ["step", "loss", "lr"] if path.name == "metrics.jsonl" else ["software", "ranks"]
        key = data.draw(st.sampled_from(keys), label="field")
        wrong = data.draw(st.sampled_from(["x", [1], {"a": 1}, True] if key != "software" else ["x", [1], 5]))
        path.write_text(good + json.dumps({"step": 5, "loss": 2.0, key: wrong}) + "\n")
    elif damage == "non_finite_step":
        path.write_text(good + data.draw(st.sampled_from(['{"step": NaN, "loss": 2}', '{"step": Infinity}'])) + "\n")
    else:
        _write_special(path, damage)


def _good_log(path: Path, data: st.DataObject) -> None:
    """A log as the engine leaves it: absent, empty, a diverged last step (a non-finite loss is the
    run's outcome, not damage), or a last line still being written."""
    good = GOOD_METRICS if path.name == "metrics.jsonl" else GOOD_RUNTIME
    tail = ["", '{"step": 3, "loss": NaN}\n', '{"step": 3, "lo', '{"step": 3, "loss": Infinity, "lr": 0.001}\n']
    kind = data.draw(st.sampled_from(["absent", "empty", *tail]), label=f"good {path.name}")
    if kind != "absent":
        path.write_text("" if kind == "empty" else good + (kind if path.name == "metrics.jsonl" else ""))


@settings(max_examples=40, suppress_health_check=[HealthCheck.too_slow])  # ~0.2-0.5 s each
@given(runs=RUNS, data=st.data())
def test_status_lists_every_run_and_warns_once_per_bad_file(runs: list[bool], data: st.DataObject) -> None:
    logs = ["metrics.jsonl", "runtime.jsonl"]
    with _results_tree() as root:
        good, bad = [], {}
        for i, is_good in enumerate(runs):
            run = _make_run(root, f"run{i}")
            if data.draw(st.booleans(), label="has manifest") or not is_good:
                (run / "manifest.json").write_text(json.dumps(_manifest(run.name)))
            for log in logs:
                _good_log(run / log, data)
            if data.draw(st.booleans(), label="unreadable profile folder"):  # traces not listed, nothing lost
                (run / "profile").mkdir()
                (run / "profile").chmod(0)
            if is_good:
                good.append(run)
                continue
            name = data.draw(st.sampled_from(["manifest.json", *logs]), label="bad file")
            damage = data.draw(st.sampled_from([*(DAMAGES if name == "manifest.json" else JSONL_DAMAGES), *UNREADABLE]))
            (run / name).unlink(missing_ok=True)
            if damage in UNREADABLE:
                content = json.dumps(_manifest(run.name)) if name == "manifest.json" else GOOD_METRICS
                bad[run] = _close(run, name, content, damage)
            elif name == "manifest.json":
                bad[run] = _damage(run, name, _manifest(run.name), damage, data, ["run_id", "state"])
            else:
                _damaged_log(run / name, damage, data)
                bad[run] = Bad(run / name)
        theirs = _another_users_experiment(root, data)
        result = _run_as_nobody(root.parent, ["status", "-r", str(root), "--format", "json"])
        assert result.exit_code == 0, result.output
        listed = sorted(r["run_id"] for r in _strict_json(result.stdout))
        assert listed == sorted(run.name for run in [*good, *bad] if _enterable(run, bad))  # the rest: said
        for where in bad.values():
            _says_once(result.stderr, where)
        for run in good:
            assert not _lines_naming(result.stderr, run), result.stderr
        if theirs:
            _says_once(result.stderr, theirs)
        table = _run_as_nobody(root.parent, ["status", "-r", str(root)], env={"COLUMNS": "300"})
        assert table.exit_code == 0, table.output
        assert table.stderr == result.stderr  # the same warnings, whatever the format


@settings(max_examples=6, suppress_health_check=[HealthCheck.too_slow])  # a report draws plots: 1.5-12 s each
@given(runs=RUNS, data=st.data())
def test_report_shows_good_runs_and_warns_once_per_bad(runs: list[bool], data: st.DataObject) -> None:
    with _results_tree() as root:
        good, bad = _summary_runs(root, runs, data)
        for run in [*good, *bad]:
            if _enterable(run, bad):
                (run / "manifest.json").write_text(json.dumps(_manifest(run.name)))
                _noise(run / "metrics.jsonl", data, special=False)
                _noise(run / "slurm-1.out", data, special=True)
        theirs = _another_users_experiment(root, data)
        out = root.parent / "report.html"
        result = _run_as_nobody(root.parent, ["report", "-r", str(root), "-o", str(out)])
        assert result.exit_code == 0, result.output
        html = out.read_text()
        for run in good:
            assert run.name in html
        for where in bad.values():
            _says_once(result.stderr, where)
        if theirs:
            _says_once(result.stderr, theirs)
            assert "theirs" not in html


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
    "grid",
    "zip",
    "search",
    "search.parameters",
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


def _refusal_is_one_clear_line(exc: HpcllmError, source: Path, keys: list[str]) -> None:
    """One line, naming the file; when several fields are wrong, it counts them and names each."""
    text = str(exc)
    assert len(text.splitlines()) == 1 and "\r" not in text, text
    assert str(source) in text or source.name in text, text
    if " invalid fields: " in text:  # at most two errors per key changed (pydantic: one per member of a union)
        assert 2 <= int(text.split(" invalid fields: ")[0].rsplit(" ", 1)[1]) <= 2 * len(keys), text


def _mutations(keys: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """One to three keys of a valid file, each given a hostile value."""
    return st.dictionaries(st.sampled_from(keys), HOSTILE, min_size=1, max_size=3)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(changes=_mutations(EXPERIMENT_KEYS))
def test_a_mutated_experiment_is_accepted_or_refused_in_one_line(changes: dict[str, Any]) -> None:
    doc = yaml.safe_load((ROOT / "experiments" / "smoke.yaml").read_text())
    cluster = load_cluster(str(ROOT / "clusters" / "local.yaml"))
    for key, value in changes.items():
        doc = _set(doc, key, value)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "exp.yaml"
        path.write_text(yaml.safe_dump(doc))
        try:
            specs = expand_experiment(load_experiment(path), cluster, str(path))
        except ConfigError as exc:
            _refusal_is_one_clear_line(exc, path, list(changes))
            return
        for spec in specs:  # accepted: every value finite, every run folder a plain name
            assert "nan" not in json.dumps(spec.training.model_dump(mode="json")).lower().replace("nano", "")
            check_name(spec.run_id, "run id")
            check_name(spec.experiment, "experiment")


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(changes=_mutations(PROFILE_KEYS))
def test_a_mutated_profile_is_accepted_or_refused_in_one_line(changes: dict[str, Any]) -> None:
    doc = yaml.safe_load((ROOT / "clusters" / "leonardo.yaml").read_text())
    for key, value in changes.items():
        doc = _set(doc, key, value)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "prof.yaml"
        path.write_text(yaml.safe_dump(doc))
        try:
            profile = load_cluster(str(path))
        except ConfigError as exc:
            _refusal_is_one_clear_line(exc, path, list(changes))
            return
        check_name(profile.name, "cluster name")


@pytest.mark.parametrize("nodes_in", ["resources", "grid"])  # refused on load, or per grid point
def test_several_invalid_fields_are_one_refusal_line_naming_each(
    tmp_path: Path, in_project: Path, nodes_in: str
) -> None:
    """Through the CLI: one line naming the file, every wrong key with what is allowed, exit 2."""
    doc = yaml.safe_load((ROOT / "experiments" / "smoke.yaml").read_text())
    del doc["where"]
    doc["grid"] = {"resources.nodes": [0]} if nodes_in == "grid" else {}
    doc["resources"]["nodes"] = 0 if nodes_in == "resources" else 1
    doc = _set(_set(doc, "training.optim.lr", "fast"), "training.train.steps", 0)
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = CliRunner().invoke(app, ["plan", str(path), "-c", "local"])
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {path}: ") and "3 invalid fields: " in line, line  # the point, if per point
    for said in (
        "resources.nodes: Input should be greater than 0 (got 0)",
        "optim.lr: Input should be a valid number",
        "train.steps: Input should be greater than 0 (got 0)",
    ):
        assert said in line, line


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

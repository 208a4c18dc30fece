"""``hpcllm doctor``'s checks of an experiment on the site: every point through ``sbatch --test-only``,
every input path, and the storage roots (present, writable, room for what the grid will write)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from hpcllm.config.cluster import ClusterProfile
from hpcllm.config.experiment import RunSpec
from hpcllm.errors import ConfigError
from hpcllm.launch.inputs import missing_inputs
from hpcllm.launch.orchestrate import results_root_for
from hpcllm.launch.render import render_job
from hpcllm.launch.slurmcmd import run_slurm
from hpcllm.launch.storage import human_bytes, room_at, storage_need
from hpcllm.plan.qos import RefusedPoint
from hpcllm.rundir import RunDir, results_from_env
from hpcllm.site.checks import FAIL, OK, SKIP, WARN, Check
from hpcllm.site.sitefacts import PartitionInfo
from hpcllm.sitepaths import expand_path

# --- experiment points --------------------------------------------------------------------------


def point_checks(
    cluster: ClusterProfile,
    account: str | None,
    specs: list[RunSpec],
    refused: list[RefusedPoint],
    part: PartitionInfo | None,
) -> list[Check]:
    checks = [
        Check("point", _label(r.point), WARN, f"refused: {r.reason}", "needs a larger allocation's QoS in the profile")
        for r in refused
    ]
    if not specs:
        return checks
    if part is None:
        return [*checks, Check("point", f"{len(specs)} points", SKIP, "not tried: the partition does not exist")]
    with tempfile.TemporaryDirectory(prefix="hpcllm-doctor-") as tmp:
        for spec in specs:
            run_dir = RunDir.of(Path(tmp), spec.experiment, cluster.name, spec.run_id)
            run_dir.path.mkdir(parents=True)
            run_dir.job_script.write_text(render_job(spec, cluster, run_dir, account=account))
            proc = run_slurm(["sbatch", "--test-only", str(run_dir.job_script)], check=False)
            said = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
            message = said[-1] if said else f"exit {proc.returncode}"
            if proc.returncode == 0:
                checks.append(
                    Check("point", spec.run_id, OK, f"sbatch --test-only: {message.removeprefix('sbatch: ')}")
                )
            else:
                checks.append(
                    Check(
                        "point",
                        spec.run_id,
                        FAIL,
                        f"sbatch --test-only refuses it: {message}",
                        "see the message; `hpcllm submit --dry-run` writes the script to read",
                    )
                )
    return checks


def _label(point: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}={v}" for k, v in point.items()) + "}"


def input_checks(specs: list[RunSpec]) -> list[Check]:
    """Every input path of the experiment (store, tokenizer, checkpoints) exists on this login node."""
    missing: dict[str, list[str]] = {}
    for spec in specs:
        for m in missing_inputs(spec):
            missing.setdefault(str(m), []).append(spec.run_id)
    if not specs:
        return []
    if not missing:
        return [Check("experiment", "input paths", OK, f"every input path of {len(specs)} points exists here")]
    return [
        Check("experiment", "input path", FAIL, f"{what} (in {len(runs)} points)", "make it, or fix the experiment")
        for what, runs in missing.items()
    ]


# --- storage ------------------------------------------------------------------------------------


def storage_checks(
    cluster: ClusterProfile, account: str | None, specs: list[RunSpec], results_root: Path | None, profile_file: str
) -> list[Check]:
    """Each storage root of the profile, and the results root submit would use (same precedence)."""
    roots = dict(cluster.storage_roots(account))
    if results_root is not None or results_from_env() is not None or "results" not in roots:
        roots["results"] = str(results_root_for(cluster, account, results_root))
    checks = []
    for name, value in roots.items():
        key = f"paths.{name}"
        if "{account}" in value:
            checks.append(Check("storage", key, FAIL, f"{value!r} needs an account", "pass --account"))
            continue
        try:
            path = Path(expand_path(value, key)).absolute()
        except ConfigError as exc:
            checks.append(
                Check(
                    "storage",
                    key,
                    FAIL,
                    f"{exc} (on this login node)",
                    f"set the variable in your login shell, or write the path out in {profile_file}",
                )
            )
            continue
        checks.append(_root_check(name, key, path, specs if name == "results" else []))
    return checks


def _root_check(name: str, key: str, path: Path, specs: list[RunSpec]) -> Check:
    target = path
    if not path.exists():
        if name != "results":
            return Check("storage", key, FAIL, f"{path} does not exist", f"mkdir -p {path} (or correct {key})")
        target = path.parent
        while not target.exists():
            target = target.parent
    try:
        with tempfile.NamedTemporaryFile(dir=target, prefix=".hpcllm-doctor-"):
            pass
    except OSError as exc:
        return Check(
            "storage",
            key,
            FAIL,
            f"{target} is not writable ({exc.strerror})",
            f"choose a root you can write to for {key}",
        )
    room = min(room_at(path), key=lambda r: r.free)
    need = storage_need(specs)
    where = str(path) if path.exists() else f"{path} (created by submit under {target})"
    if need.runs and need.total > room.free:
        return Check(
            "storage",
            key,
            FAIL,
            f"{where}: the experiment needs {need.describe()}, {human_bytes(room.free)} free ({room.source})",
            "choose a larger root, keep fewer checkpoints, or submit in parts",
        )
    needs = f"; the experiment needs {human_bytes(need.total)}" if need.runs else ""
    return Check("storage", key, OK, f"{where}: writable, {human_bytes(room.free)} free ({room.source}){needs}")

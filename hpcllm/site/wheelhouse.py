"""``hpcllm env pack``: a folder of wheels (hpcllm and its pinned dependencies) for a site whose nodes,
login nodes included, have no internet (MareNostrum 5).

Built on a machine with internet for the site's Python and platform (pip's ``--python-version`` /
``--platform``: binary wheels only), then copied to the site and installed with the index switched
off: ``pip install --no-index --find-links DIR -r DIR/requirements.txt``. The top-level dependencies
are pinned to the versions of this environment (the ones tests ran with); pip resolves the rest for
the target, and ``requirements.txt`` pins every wheel in the folder, so the site gets exactly them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from hpcllm.errors import HpcllmError

# Most HPC sites run x86_64 Linux with glibc >= 2.17; a wheel tagged for either works there.
DEFAULT_PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64")
REQUIREMENTS = "requirements.txt"
SHIPPED = ("pyproject.toml", "README.md", "hpcllm", "templates", "clusters")  # what the wheel is built from
# name-version(-build)?-python-abi-platform.whl (PEP 427); names normalised as PEP 503 says.
_WHEEL = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)(-\d[^-]*)?-[^-]+-[^-]+-[^-]+\.whl$")


@dataclass
class Pack:
    folder: Path
    wheels: list[Path]
    pinned: list[str]  # name==version of every wheel, as requirements.txt says

    @property
    def install_line(self) -> str:
        return f"python -m pip install --no-index --find-links {self.folder} -r {self.folder / REQUIREMENTS}"


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def project_root() -> Path:
    """The source tree hpcllm runs from (its wheel is built from it)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file():
        raise HpcllmError(
            f"{root}: hpcllm is installed without its source tree; run `hpcllm env pack` from a clone "
            "(pip install -e .), which it builds the hpcllm wheel from"
        )
    return root


def pinned_requirements(extras: tuple[str, ...] = ()) -> list[str]:
    """hpcllm's dependencies (with ``extras``), each pinned to the version installed here."""
    from packaging.requirements import Requirement

    out = []
    for text in metadata.requires("hpcllm") or []:
        req = Requirement(text)
        wanted = req.marker is None or any(req.marker.evaluate({"extra": e}) for e in ("", *extras))
        if not wanted:
            continue
        try:
            version = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            raise HpcllmError(
                f"{req.name} (a dependency of hpcllm{'[' + ','.join(extras) + ']' if extras else ''}) is not "
                "installed here, so its version cannot be pinned: pip install it first"
            ) from None
        out.append(f"{req.name}=={version}")
    return sorted(set(out), key=str.lower)


def _pip(args: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise HpcllmError(f"pip {args[0]} failed (exit {proc.returncode}):\n{tail}")


def build_wheelhouse(
    folder: Path,
    *,
    python_version: str | None = None,
    platforms: tuple[str, ...] = DEFAULT_PLATFORMS,
    extras: tuple[str, ...] = (),
) -> Pack:
    """hpcllm's wheel and every dependency's, for ``python_version`` (e.g. ``3.11``) on ``platforms``."""
    folder = folder.absolute()
    folder.mkdir(parents=True, exist_ok=True)
    version = python_version or f"{sys.version_info.major}.{sys.version_info.minor}"
    with tempfile.TemporaryDirectory(prefix="hpcllm-pack-") as tmp:
        # Built from a copy: setuptools' build/ and a stale hpcllm.egg-info never land in the clone
        # (an egg-info there would shadow the installed metadata this module pins from).
        src = Path(tmp) / "src"
        src.mkdir()
        root = project_root()
        for name in SHIPPED:
            (shutil.copytree if (root / name).is_dir() else shutil.copy2)(root / name, src / name)
        _pip(["wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(folder), str(src)])
    target = ["--only-binary=:all:", "--python-version", version, "--implementation", "cp"]
    for platform in platforms:
        target += ["--platform", platform]
    _pip(["download", "-q", "-d", str(folder), *target, *pinned_requirements(extras)])
    wheels = sorted(folder.glob("*.whl"))
    pinned = []
    for wheel in wheels:
        m = _WHEEL.match(wheel.name)
        if m is None:
            raise HpcllmError(f"{wheel}: not a wheel file name pip would install")
        pinned.append(f"{_normalise(m.group('name'))}=={m.group('version')}")
    from hpcllm.fsutil import atomic_write_text

    atomic_write_text(folder / REQUIREMENTS, "\n".join(sorted(pinned)) + "\n")
    return Pack(folder, wheels, sorted(pinned))

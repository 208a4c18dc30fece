"""``hpcllm env pack``: the offline install of a site without internet (docs/sites.md)."""

from __future__ import annotations

from pathlib import Path

import typer

from hpcllm.cli.common import console, err_console, fail
from hpcllm.errors import HpcllmError

env_app = typer.Typer(help="Install hpcllm where nodes have no internet.", no_args_is_help=True)


@env_app.command("pack")
def pack(
    output: Path = typer.Option(Path("wheelhouse"), "--output", "-o", help="Folder to fill with wheels."),
    python_version: str | None = typer.Option(
        None, "--python-version", help="The site's Python, e.g. 3.11 (default: this one's)."
    ),
    platform: list[str] | None = typer.Option(
        None, "--platform", help="Wheel platform tag; repeat for several (default: manylinux x86_64)."
    ),
    train: bool = typer.Option(False, "--train", help="Also the engine's dependencies (torch: large)."),
) -> None:
    """Download hpcllm and its pinned dependencies as wheels for the site's Python, then print the
    line that installs them there with no index."""
    from hpcllm.site.wheelhouse import DEFAULT_PLATFORMS, build_wheelhouse

    try:
        with err_console.status(f"building the wheelhouse in {output} ..."):
            built = build_wheelhouse(
                output,
                python_version=python_version,
                platforms=tuple(platform or DEFAULT_PLATFORMS),
                extras=("train",) if train else (),
            )
    except HpcllmError as exc:
        fail(exc)
    size = sum(w.stat().st_size for w in built.wheels) / 2**20
    console.print(f"{len(built.wheels)} wheels, {size:.0f} MiB, in {built.folder}", highlight=False, soft_wrap=True)
    console.print("copy the folder to the site, then, in a fresh venv there:", highlight=False)
    console.print(f"  {built.install_line}", highlight=False, soft_wrap=True, markup=False)

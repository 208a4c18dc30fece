"""The ``hpcllm`` command: one module per command group, assembled here.

Thin: each command parses, calls one function of the package below it, prints with rich. Nothing
here imports torch: the commands must answer in a fraction of a second on a login node.
"""

from __future__ import annotations

import typer

from hpcllm import __version__
from hpcllm.cli import collect, doctor, explore, generate, plan, report, runs, schema
from hpcllm.cli.boundary import guard_callbacks, run_guarded
from hpcllm.cli.ckpt import ckpt_app
from hpcllm.cli.clusters import clusters_app
from hpcllm.cli.common import console
from hpcllm.cli.data import data_app
from hpcllm.cli.env import env_app
from hpcllm.cli.help import add_examples, show_flags_without_a_type
from hpcllm.cli.model import model_app
from hpcllm.cli.search import search_app

app = typer.Typer(
    name="hpcllm",
    help="Run LLM pretraining scaling experiments on SLURM clusters with the bundled FSDP2 engine.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

for command in (
    plan.plan,
    runs.submit,
    runs.status,
    runs.cancel,
    runs.logs,
    collect.collect,
    report.report,
    schema.schema,
    doctor.doctor,
):
    app.command()(command)
app.command()(generate.generate)
app.command("explore-batch")(explore.explore_batch)
# Sub-apps of their own modules; each imports torch only inside its commands.
app.add_typer(clusters_app, name="clusters")
app.add_typer(data_app, name="data")
app.add_typer(ckpt_app, name="ckpt")
app.add_typer(model_app, name="model")
app.add_typer(search_app, name="search")
app.add_typer(env_app, name="env")


add_examples(app)
guard_callbacks(app)
show_flags_without_a_type()


def _version(value: bool) -> None:
    if value:
        console.print(f"hpcllm {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    """hpcllm: experiment grids -> sbatch scripts -> torchrun + FSDP2 -> scaling tables."""


def main() -> None:
    """The ``hpcllm`` entry point: the app inside the one exception boundary (hpcllm.cli.boundary)."""
    run_guarded(app)


if __name__ == "__main__":
    main()

"""Every command's --help: real examples that parse, flags without a type, one meaning per option."""

from __future__ import annotations

import shlex
from typing import Any

import pytest
import typer.main
from collect_support import engine_summary, write_run
from typer.testing import CliRunner

from hpcllm.cli import app
from hpcllm.cli.help import EXAMPLES

runner = CliRunner()


def _commands() -> dict[tuple[str, ...], Any]:
    """Every leaf command (and group with a callback of its own) by its path."""
    out: dict[tuple[str, ...], Any] = {}

    def walk(cmd: Any, path: tuple[str, ...]) -> None:
        if getattr(cmd, "commands", None):
            if path and cmd.invoke_without_command:
                out[path] = cmd
            for name, sub in cmd.commands.items():
                walk(sub, (*path, name))
        else:
            out[path] = cmd

    walk(typer.main.get_command(app), ())
    return out


COMMANDS = _commands()


def _is_option(param: Any) -> bool:
    return param.param_type_name == "option"  # typer vendors click: no isinstance on click's classes


def test_every_command_has_examples():
    assert sorted(COMMANDS) == sorted(EXAMPLES), "a command without examples, or examples of no command"


@pytest.mark.parametrize("path", sorted(EXAMPLES), ids=[" ".join(p) for p in sorted(EXAMPLES)])
def test_help_shows_examples_and_no_bool_metavar(path):
    result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"}, terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.output  # a flag takes no value
    assert "Examples" in result.output
    for example in EXAMPLES[path]:
        assert example.split()[-1] in result.output


@pytest.mark.parametrize("path", sorted(EXAMPLES), ids=[" ".join(p) for p in sorted(EXAMPLES)])
def test_examples_parse(path):
    """Each example is a command line this version accepts: its options exist and take its values."""
    cmd = COMMANDS[path]
    for example in EXAMPLES[path]:
        words = shlex.split(example.split(" > ")[0])
        assert words[: 1 + len(path)] == ["hpcllm", *path], example
        args = words[1 + len(path) :]
        if getattr(cmd, "commands", None) and args and args[0] in cmd.commands:
            cmd, args = cmd.commands[args[0]], args[1:]
        ctx = cmd.make_context(path[-1], args)  # raises click.UsageError for an unknown option or bad value
        ctx.close()


def test_each_short_option_means_one_thing():
    meanings: dict[str, set[str]] = {}
    for cmd in COMMANDS.values():
        for param in cmd.params:
            if _is_option(param) and not param.hidden:
                longs = [o for o in param.opts if o.startswith("--")]
                for short in (o for o in param.opts if not o.startswith("--")):
                    meanings.setdefault(short, set()).update(longs)
    assert meanings["-c"] == {"--cluster"}
    assert meanings["-r"] == {"--results"}
    assert meanings["-k"] == {"--columns"}
    # -n is "how many", as for head(1): log lines in `logs`, tokens in `generate`
    assert meanings.pop("-n") == {"--lines", "--max-new-tokens"}
    assert all(len(longs) == 1 for longs in meanings.values()), meanings


def test_results_root_is_spelled_the_same_everywhere():
    for path, cmd in COMMANDS.items():
        for param in cmd.params:
            if _is_option(param) and "--results" in param.opts:
                assert "-r" in param.opts, path
            assert not (not _is_option(param) and not param.hidden and param.name in ("root",)), path


def test_old_spellings_work_with_one_deprecation_line(tmp_path):
    write_run(tmp_path, "r1", summary=engine_summary())
    old = runner.invoke(app, ["collect", str(tmp_path), "-c", "gpus,run"])
    new = runner.invoke(app, ["collect", "-r", str(tmp_path), "-k", "gpus,run"])
    assert old.exit_code == new.exit_code == 0, old.output
    assert old.stdout == new.stdout and "| 8 | r1 |" in new.stdout
    warnings = [line for line in old.stderr.splitlines() if line.startswith("deprecated:")]
    assert len(warnings) == 2 and "--results" in warnings[0] and "-k" in warnings[1]
    assert "deprecated" not in new.stderr
    status = runner.invoke(app, ["status", str(tmp_path)])
    assert status.exit_code == 0 and "r1" in status.stdout and "deprecated: hpcllm status FOLDER" in status.stderr


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=" ".join)
def test_help_paragraphs_are_one_line_each(path: tuple[str, ...]) -> None:
    """The command list prints a help text's line breaks as they are: a docstring wrapped in the
    source would break mid-sentence there. Paragraphs are one line; rich wraps them."""
    text = COMMANDS[path].help or ""
    assert all("\n" not in paragraph for paragraph in text.split("\n\n")), text

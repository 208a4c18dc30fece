"""The size and import rules of docs/architecture.md, checked on the source so they cannot regress.

import-linter (``make lint``) checks the layers; this checks what it does not: no product file over
400 lines, no function body over 80 lines, and no import circle between two modules (lazy imports
inside functions included: a circle hidden in a function is still a circle).
"""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hpcllm"
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 80


def _sources() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = ast.parse(path.read_text(), str(path))
    return out


def _function_lengths(tree: ast.Module) -> list[tuple[str, int]]:
    """(name, lines of its body): from the first statement (the docstring, if any) to the end, so a
    command's option declarations in its signature do not count."""
    return [
        (node.name, (node.end_lineno or node.lineno) - node.body[0].lineno + 1)
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    ]


def _imports(name: str, tree: ast.Module, modules: set[str]) -> set[str]:
    """The package's modules ``name`` imports, anywhere in the file."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name.split(".")[: -node.level] if not _is_package(name) else name.split(".")
                base = ".".join(package + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        found.update(t for t in targets if t in modules and t != name)
    return found


def _is_package(name: str) -> bool:
    return (PACKAGE.parent / name.replace(".", "/") / "__init__.py").is_file()


def test_no_product_file_is_over_400_lines() -> None:
    long = {
        str(p.relative_to(PACKAGE.parent)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES
    }
    assert not long, f"split these files (at most {MAX_FILE_LINES} lines): {long}"


def test_no_function_is_over_80_lines() -> None:
    long = {
        f"{module}.{fn}": n
        for module, tree in _sources().items()
        for fn, n in _function_lengths(tree)
        if n > MAX_FUNCTION_LINES
    }
    assert not long, f"split these functions into named steps (at most {MAX_FUNCTION_LINES} lines): {long}"


def test_no_import_circle() -> None:
    sources = _sources()
    graph = {name: _imports(name, tree, set(sources)) for name, tree in sources.items()}
    circles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    # A package's __init__ importing its own submodules (re-exports) is not a circle of two modules.
    real = [c for c in circles if not any(b.startswith(a + ".") for a, b in itertools.pairwise(c))]
    assert not real, "import circles: " + "; ".join(" -> ".join(c) for c in real)


@pytest.mark.parametrize(
    "source,expected",
    [
        ("def f():\n    '''doc'''\n" + "    x = 1\n" * 80, 81),
        ("def f(\n    a: int = 1,\n    b: int = 2,\n):\n    return a + b\n", 1),
    ],
)
def test_the_function_rule_counts_body_lines(source: str, expected: int) -> None:
    assert _function_lengths(ast.parse(source)) == [("f", expected)]

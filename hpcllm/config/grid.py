"""Grid expansion: ``grid`` (cross product), ``zip`` (lock-step groups) and a ``where`` filter.

Kept apart from the experiment model because it is plain dict manipulation that is easy to test on
its own. Keys are dotted paths into the experiment document (``parallel.sharding``,
``resources.nodes``); ``where`` is a boolean expression over the same names, evaluated by a small
whitelisting interpreter (never ``eval``), e.g. ``"parallel.sharding != 'HYBRID_SHARD' or resources.nodes > 1"``.
"""

from __future__ import annotations

import ast
import copy
import itertools
import operator
from collections.abc import Callable
from typing import Any

Point = dict[str, Any]

# More points than any scheduler would queue for one user (SLURM's MaxSubmitJobs is typically in
# the hundreds to a few thousand); expanding and validating this many takes seconds, not minutes.
MAX_POINTS = 10_000


def axis_sizes(grid: dict[str, list[Any]], zips: list[dict[str, list[Any]]]) -> dict[str, int]:
    """Each axis with its number of values: grid keys, and one axis per zip group (keys joined by +)."""
    sizes = {key: len(values) for key, values in grid.items()}
    for group in zips:
        lengths = {len(v) for v in group.values()}
        if len(lengths) > 1:
            detail = ", ".join(f"{k}: {len(v)}" for k, v in group.items())
            raise ValueError(f"zip: group lists must have equal lengths ({detail})")
        sizes["+".join(group)] = lengths.pop() if lengths else 0
    return sizes


def check_size(grid: dict[str, list[Any]], zips: list[dict[str, list[Any]]], limit: int = MAX_POINTS) -> int:
    """The number of points, counted without expanding; ValueError naming the axes beyond ``limit``."""
    sizes = axis_sizes(grid, zips)
    total = 1
    for n in sizes.values():
        total *= n
    if total > limit:
        detail = " x ".join(f"{n:,} ({key})" for key, n in sizes.items())
        raise ValueError(
            f"grid: {detail} = {total:,} points; at most {limit:,} per experiment: split it into "
            "several experiments, or narrow the axes"
        )
    return total


def expand(grid: dict[str, list[Any]], zips: list[dict[str, list[Any]]]) -> list[Point]:
    """All points: the cross product of every grid axis and every zip group (a group = one axis)."""
    check_size(grid, zips)
    axes: list[list[Point]] = [[{key: v} for v in values] for key, values in grid.items()]
    for group in zips:
        n = len(next(iter(group.values()))) if group else 0
        axes.append([{k: group[k][i] for k in group} for i in range(n)])
    points = []
    for combo in itertools.product(*axes):
        point: Point = {}
        for part in combo:
            point.update(part)
        points.append(point)
    return points


def set_dotted(doc: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """A deep copy of ``doc`` with ``a.b.c`` set to ``value`` (creating dicts on the way)."""
    return apply_point(doc, {key: value})


def apply_point(doc: dict[str, Any], point: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of ``doc`` with every dotted key of ``point`` set (one copy, however many keys)."""
    doc = copy_tree(doc)
    for key, value in point.items():
        _set_in_place(doc, key, value)
    return doc


def _set_in_place(doc: dict[str, Any], key: str, value: Any) -> None:
    node = doc
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ValueError(f"cannot set {key!r}: {part!r} is a {type(child).__name__}, not a mapping")
        node = child
    node[parts[-1]] = copy_tree(value)


_IMMUTABLE = (str, int, float, bool, type(None))


def copy_tree(value: Any) -> Any:
    """A deep copy of parsed YAML (dicts, lists and scalars), three times as fast as ``copy.deepcopy``,
    which keeps a memo for shared and cyclic references that parsed YAML does not need: a grid
    copies its document once per point. Other values go through ``copy.deepcopy``."""
    kind = type(value)
    if kind is dict:
        return {k: copy_tree(v) for k, v in value.items()}
    if kind is list:
        return [copy_tree(v) for v in value]
    if kind in _IMMUTABLE:
        return value
    return copy.deepcopy(value)


def get_dotted(doc: dict[str, Any], key: str) -> Any:
    node: Any = doc
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(key)
        node = node[part]
    return node


_BINOPS: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}
_CMPOPS: dict[type[ast.cmpop], Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
}


# A filter is a line or two; the limit bounds the work an expression can ask for (with numbers
# only in arithmetic, its values stay as small as its text).
MAX_WHERE_CHARS = 500


def compile_where(expression: str) -> Callable[[dict[str, Any]], bool]:
    """Parse ``expression`` once; the result evaluates it against any number of documents."""
    tree = _parse_where(expression)

    def evaluate(doc: dict[str, Any]) -> bool:
        try:
            return bool(_eval(tree.body, doc, expression))
        except (ArithmeticError, TypeError) as exc:  # 1/0, 'tiny' > 3, ...
            raise ValueError(f"where: cannot evaluate {expression!r}: {exc}") from None
        except RecursionError:
            raise ValueError(f"where: {expression[:40]!r}...: nested too deeply") from None

    return evaluate


def where_names(expression: str) -> list[str]:
    """The dotted names an expression reads (``parallel.sharding``), for checking them up front."""
    tree = _parse_where(expression)
    names: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, (ast.Name, ast.Attribute)):
            name = _dotted_name(node)
            if name and name not in ("True", "False", "None"):
                names.append(name)
                return
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree.body)
    return names


def _parse_where(expression: str) -> ast.Expression:
    """The syntax tree of a ``where`` expression; ValueError for one too long or not an expression."""
    if len(expression) > MAX_WHERE_CHARS:
        raise ValueError(
            f"where: an expression of {len(expression):,} characters; at most {MAX_WHERE_CHARS} "
            "(split it into several `where` entries)"
        )
    try:
        return ast.parse(expression, mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"where: not an expression: {expression!r} ({exc.msg})") from None


def _dotted_name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted_name(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def _eval(node: ast.AST, doc: dict[str, Any], src: str) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.Name, ast.Attribute)):
        name = _dotted_name(node)
        if name in ("True", "False", "None"):
            return {"True": True, "False": False, "None": None}[name]
        try:
            return get_dotted(doc, name or "")
        except KeyError:
            raise ValueError(f"where: {name!r} is not a key of the resolved config (in {src!r})") from None
    if isinstance(node, ast.BoolOp):
        values = [_eval(v, doc, src) for v in node.values]
        return all(values) if isinstance(node.op, ast.And) else any(values)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.USub)):
        value = _eval(node.operand, doc, src)
        return (not value) if isinstance(node.op, ast.Not) else -value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left, right = _eval(node.left, doc, src), _eval(node.right, doc, src)
        for operand in (left, right):
            # Numbers only: 'x' * 10**9 or [0] * 10**9 would be a memory bomb in a filter.
            if isinstance(operand, bool) or not isinstance(operand, (int, float)):
                raise ValueError(f"where: arithmetic needs numbers, got {operand!r} (in {src!r})")
        return _BINOPS[type(node.op)](left, right)
    if isinstance(node, ast.Compare):
        left = _eval(node.left, doc, src)
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            right = _eval(comparator, doc, src)
            if type(op) not in _CMPOPS or not _CMPOPS[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_eval(e, doc, src) for e in node.elts]
    raise ValueError(
        f"where: {type(node).__name__} is not allowed in {src!r}; use names, constants, "
        "comparisons, and/or/not, + - * / // %"
    )

"""Load YAML into pydantic models with errors that name the file, the key, the value and the rule.

Config files are written by people and copied between projects, so the reader refuses what YAML
itself would accept silently or expensively, each time with the file, line and key:

- a key given twice in one mapping (PyYAML keeps the last one: a second ``training:`` block would
  silently replace the first);
- bytes that are not UTF-8 (a bare ``UnicodeDecodeError`` names no file);
- ``.inf`` / ``.nan`` (no setting of ours means "infinite"; ``null`` is the open bound);
- integers longer than any setting needs (Python refuses to convert > 4300 digits, with a bare
  ValueError);
- resource exhaustion: files over ``MAX_CONFIG_BYTES`` (read bounded, so ``/dev/zero`` is refused
  too), nesting deeper than ``MAX_DEPTH`` (PyYAML composes recursively and would die with a
  RecursionError; the depth is checked on the flat event stream first), recursive aliases, and
  alias bombs ("billion laughs": a few lines of ``&a``/``*a`` that expand to billions of values
  once validated or copied). The size check counts values *as expanded* without expanding anything.
"""

from __future__ import annotations

import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from hpcllm import runfiles
from hpcllm.errors import ConfigError

M = TypeVar("M", bound=BaseModel)

# Generous for any hand-written config (the shipped ones are < 5 KiB and < 300 values).
MAX_CONFIG_BYTES = 1 << 20
MAX_VALUES = 100_000
MAX_DEPTH = 32
MAX_INT_DIGITS = 30
# Every integer setting ends up in a C type (torch and numpy seeds, tensor sizes, SLURM fields): one beyond
# a signed 64-bit integer would pass validation and then crash the job, so the loader refuses it.
INT_LIMIT = 2**63

_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_MERGE_TAG = "tag:yaml.org,2002:merge"


def read_yaml(path: Path) -> Any:
    """Parse a YAML config file; every refusal names the file, and the line and key where known."""
    path = Path(path)
    too_big = f"larger than {MAX_CONFIG_BYTES:,} bytes, the most a config file may have (is this the right file?)"
    try:  # never blocking (a FIFO waited for a writer forever) and bounded (/dev/zero is not read whole)
        raw = runfiles.read_bytes(path, MAX_CONFIG_BYTES)
    except runfiles.RunFileProblem as exc:
        oversized = "more than the" in exc.reason  # runfiles' words for a file over the limit
        raise ConfigError(f"{path}: {too_big if oversized else 'cannot read: ' + exc.reason}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"{path}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); save the file as UTF-8"
        ) from None
    loader: yaml.SafeLoader | None = None
    try:
        loader = yaml.SafeLoader(text)  # checks for control characters at once
        _check_depth(text, path)  # before composing, which recurses once per level
        node = loader.get_single_node()
        if node is None:
            return None
        _Checker(path, loader).walk(node, [])
        return loader.construct_document(node)
    except yaml.reader.ReaderError as exc:  # a control character: position, no line
        line = text.count("\n", 0, exc.position) + 1
        raise ConfigError(
            f"{path}:{line}: invalid YAML: control character U+{exc.character:04X} is not allowed in YAML text"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}{where}: invalid YAML: {problem}") from None
    except RecursionError:
        raise ConfigError(
            f"{path}: nested too deeply to read (more than {MAX_DEPTH} levels of lists and mappings)"
        ) from None
    finally:
        if loader is not None:
            loader.dispose()


def _key_label(key: list[str]) -> str:
    """``a.b.c`` for an error message; a path through deep nesting is cut in the middle."""
    if not key:
        return "(top level)"
    return ".".join(key if len(key) <= 6 else [*key[:3], "…", *key[-2:]])


def _check_depth(text: str, path: Path) -> None:
    """Refuse nesting deeper than MAX_DEPTH from the event stream (flat, however deep the text)."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                # The parser marks every event it emits; the stubs allow None for hand-built ones.
                where = f"{path}:{event.start_mark.line + 1}" if event.start_mark is not None else str(path)
                raise ConfigError(
                    f"{where}: lists and mappings nested more than {MAX_DEPTH} levels deep; a config needs a handful"
                )
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            depth -= 1


class _Checker:
    """One walk over the composed YAML nodes, before any Python object exists: repeated keys,
    non-finite floats, huge integers, nesting depth, and the value count as if every alias were
    expanded (memoised per node, so the walk itself stays as small as the file)."""

    def __init__(self, path: Path, loader: yaml.SafeLoader) -> None:
        self.path = path
        self.loader = loader
        self.sizes: dict[int, int] = {}  # id(node) -> values below it, aliases expanded
        self.open: set[int] = set()  # nodes being walked: meeting one again is a cycle

    def fail(self, node: yaml.Node, key: list[str], message: str) -> typing.NoReturn:
        raise ConfigError(f"{self.path}:{node.start_mark.line + 1}: {_key_label(key)}: {message}")

    def walk(self, node: yaml.Node, key: list[str], depth: int = 0) -> int:
        """The number of values in ``node`` with aliases expanded; raises on the first problem."""
        if id(node) in self.sizes:
            return self.sizes[id(node)]  # an alias of a node already checked
        if id(node) in self.open:
            self.fail(node, key, "an alias refers to a node that contains it (a recursive structure)")
        if depth > MAX_DEPTH:
            self.fail(
                node,
                key,
                f"nested more than {MAX_DEPTH} levels deep once aliases (*name) are expanded; a config needs a handful",
            )
        self.open.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            size = 1 + sum(self.walk(item, [*key, str(i)], depth + 1) for i, item in enumerate(node.value))
        elif isinstance(node, yaml.MappingNode):
            self._repeated_keys(node, key)
            size = 1
            for key_node, value_node in node.value:
                name = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
                size += self.walk(key_node, key, depth + 1) + self.walk(value_node, [*key, str(name)], depth + 1)
        else:
            self._scalar(node, key)
            size = 1
        self.open.discard(id(node))
        if size > MAX_VALUES:
            self.fail(
                node,
                key,
                f"expands to more than {MAX_VALUES:,} values (YAML aliases, *name, "
                "repeat whole blocks); write the values out, or use a grid",
            )
        self.sizes[id(node)] = size
        return size

    def _scalar(self, node: yaml.Node, key: list[str]) -> None:
        if node.tag == _MERGE_TAG:
            return  # "<<": not a value, the constructor merges the mapping it names
        if node.tag == _INT_TAG and len(node.value) > MAX_INT_DIGITS:
            self.fail(
                node, key, f"an integer of {len(node.value)} characters; no setting needs more than {MAX_INT_DIGITS}"
            )
        try:  # built now (and kept by the loader), so that a bad date or number names its key
            value = self.loader.construct_object(node)
        except (ValueError, OverflowError) as exc:
            self.fail(node, key, f"{node.value!r} is not a valid {node.tag.rpartition(':')[2]}: {exc}")
        if node.tag == _INT_TAG and not -INT_LIMIT <= value < INT_LIMIT:
            self.fail(node, key, f"{node.value} is out of range; integers must lie in [-2**63, 2**63 - 1]")
        if node.tag == _FLOAT_TAG and not math.isfinite(value):
            self.fail(
                node,
                key,
                f"{node.value} is not a finite number; give a finite value (or null where the setting allows none)",
            )

    def _repeated_keys(self, node: yaml.MappingNode, key: list[str]) -> None:
        first_line: dict[tuple[str, str], int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
                continue  # "<<: *base" merges; keys given next to it override, as YAML intends
            ident = (key_node.tag, key_node.value)
            line = key_node.start_mark.line + 1
            if ident in first_line:
                self.fail(
                    key_node,
                    [*key, key_node.value],
                    f"given twice, at lines {first_line[ident]} and {line}; YAML would silently "
                    "keep only the last one: merge them into one",
                )
            first_line[ident] = line


def validate(model: type[M], data: Any, source: str) -> M:
    """``model.model_validate(data)``, turning a ValidationError into a ConfigError naming ``source``."""
    if data is None:
        data = {}
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, model, source)) from None


def load_model(model: type[M], path: Path) -> M:
    return validate(model, read_yaml(path), str(path))


def format_validation_error(exc: ValidationError, model: type[BaseModel], source: str) -> str:
    """One line, however many fields are wrong (``one_refusal(source, field_problems(exc.errors(), model))``)."""
    return one_refusal(source, field_problems(exc.errors(), model))


def one_refusal(source: str, problems: list[str]) -> str:
    """``source: key: what is wrong``, or ``source: N invalid fields: key: what; key: what``: a refusal
    is one line naming the file, whatever the number of fields wrong in it."""
    if len(problems) == 1:
        return f"{source}: {problems[0]}"
    return f"{source}: {len(problems)} invalid fields: " + "; ".join(problems)


def field_problems(errors: list[ErrorDetails], model: type[BaseModel]) -> list[str]:
    """``dotted.key: what is wrong (got value)`` per error (``ValidationError.errors()``), each one line."""
    problems = []
    for err in errors:
        loc = [str(p) for p in err["loc"]]
        if loc and loc[-1] == "[key]":  # pydantic's marker: the mapping key itself is invalid
            loc[-1] = "(key)"
        # A key with a newline in it must not break the message into lines.
        key = ".".join(p if p.isprintable() else repr(p) for p in loc) or "(top level)"
        msg = " ".join(str(err["msg"]).split())
        if err["type"] == "extra_forbidden":
            allowed = _fields_at(model, err["loc"][:-1])
            if allowed:
                msg = f"unknown key; allowed keys here: {', '.join(allowed)}"
        shown = "" if err["type"] in ("missing", "extra_forbidden") else f" (got {err.get('input')!r})"
        problems.append(f"{key}: {msg}{shown}")
    return problems


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the sub-model that ``loc`` points into, for "unknown key" messages."""
    current: Any = model
    for part in loc:
        origin = typing.get_origin(current)
        if origin in (list, dict, tuple):
            current = _unwrap(current)  # ``part`` is a list index or a mapping key: step over it
            continue
        current = _unwrap(current)
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = current.model_fields.get(str(part))
        if field is None:
            return []
        current = field.annotation
        if typing.get_origin(current) in (typing.Union, types.UnionType):
            current = next((a for a in typing.get_args(current) if a is not type(None)), current)
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _unwrap(annotation: Any) -> Any:
    """``list[X]``, ``X | None``, ``dict[str, X]`` -> ``X`` (the first BaseModel inside)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, list, dict, tuple):
        for arg in typing.get_args(annotation):
            found = _unwrap(arg)
            if found is not None:
                return found
    return None

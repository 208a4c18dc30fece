"""Paths with site variables: ``$CINECA_SCRATCH/data``, ``${WORK}/x``, ``~/venvs`` and ``{scratch}/data``.

A path in an experiment is resolved in two places, because two machines see it:

- On the login node, ``hpcllm submit`` replaces ``{name}`` with the cluster profile's storage root
  ``paths.name`` (the site fact "scratch is ``$CINECA_SCRATCH`` on Leonardo" lives in the profile, so
  an experiment never guesses a site variable), makes relative paths absolute (the job starts in
  another directory) and warns about variables that are not set there.
- On the compute node, the engine expands ``$VAR``, ``${VAR}`` and ``~`` with :func:`expand_path`:
  the value on the node that reads the file is the one that counts. An unset variable is an error
  that names the config key and the variable, never a path like ``$SCRATCH/data`` used literally.

Config fields that hold paths are declared with the ``SitePath`` type (or ``site_path(...)`` for a
field that also takes keywords, such as the ``byte`` tokenizer); :func:`map_site_paths` finds every
such field in a config, however deeply nested, so a new path field needs nothing but its type.
Torch-free: the login node and the engine share it.
"""

from __future__ import annotations

import functools
import os
import re
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel

from hpcllm.errors import ConfigError

# $NAME or ${NAME}; anything else after a '$' is left alone (no ${VAR:-default} games in paths).
_VARIABLE = re.compile(r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")
# {name}, not preceded by '$' (that is ${VAR}): a storage root of the cluster profile.
_ROOT = re.compile(r"(?<!\$)\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class SitePathMarker:
    """Marks a config field as a path; ``keywords`` are values that are not paths (``byte``)."""

    keywords: tuple[str, ...] = ()


def site_path(*keywords: str) -> Any:
    """``Annotated[str, site_path("byte")]``: a path field that also accepts these keywords."""
    return SitePathMarker(tuple(keywords))


SitePath = Annotated[str, SitePathMarker()]

M = TypeVar("M", bound=BaseModel)


def variables_in(value: str) -> list[str]:
    """The environment variables ``value`` refers to, in order (``$A/${B}`` -> ``['A', 'B']``)."""
    return [m.group("braced") or m.group("plain") for m in _VARIABLE.finditer(value)]


def unset_variables(value: str, environ: Mapping[str, str] | None = None) -> list[str]:
    """The variables of ``value`` that are not set (or empty) in ``environ`` (default: this process)."""
    env = os.environ if environ is None else environ
    return [name for name in variables_in(value) if not env.get(name)]


def expand_path(value: str, key: str, environ: Mapping[str, str] | None = None) -> str:
    """``value`` with ``~`` (at the start) and every ``$VAR``/``${VAR}`` expanded; the one helper for
    every path the engine reads or writes.

    An unset or empty variable raises ``ConfigError`` naming ``key`` and the variable: a path such as
    ``/hpcllm/data`` (what a shell would make of ``$SCRATCH/hpcllm/data``) would point somewhere else.
    """
    env = os.environ if environ is None else environ
    missing = unset_variables(value, env)
    if missing:
        names = ", ".join(f"${name}" for name in missing)
        raise ConfigError(
            f"{key}: {names} {'is' if len(missing) == 1 else 'are'} not set on this node "
            f"({os.uname().nodename}), so {value!r} cannot be resolved; export it in the job "
            "(the profile's env: or setup:) or use an absolute path"
        )
    expanded = _VARIABLE.sub(lambda m: env[m.group("braced") or m.group("plain")], value)
    if expanded.startswith("~"):
        expanded = os.path.expanduser(expanded)
    return expanded


def substitute_roots(value: str, roots: Mapping[str, str], key: str, owner: str) -> str:
    """Replace ``{name}`` with ``roots[name]``; an unknown name is an error that lists the known ones."""

    def replace(match: re.Match[str]) -> str:
        name = match.group("name")
        if name not in roots:
            known = ", ".join(sorted(roots)) or "(none)"
            raise ConfigError(
                f"{key}: {{{name}}} is not a storage root of {owner} (its paths: {known}); "
                f"add `paths: {{{name}: ...}}` to the profile or write the path out"
            )
        return roots[name]

    return _ROOT.sub(replace, value)


def root_names(value: str) -> list[str]:
    """The ``{name}`` storage roots ``value`` refers to."""
    return [m.group("name") for m in _ROOT.finditer(value)]


def absolute_on_login(value: str) -> str:
    """A relative path made absolute against this directory; ``$VAR`` and ``~`` paths are left for
    the compute node (its variables are the ones that count). Either way in one spelling
    (``normal_spelling``): run ids hash the resolved config, and two spellings of one path are one run."""
    if value.startswith(("$", "~")) or os.path.isabs(value):
        return normal_spelling(value)
    return normal_spelling(str(Path(value).absolute()))


def normal_spelling(value: str) -> str:
    """``value`` without repeated ``/``, ``.`` components and a trailing ``/``: only what cannot change
    the file it names. ``..`` stays (``a/link/..`` is not ``a`` when ``link`` is a symbolic link, and
    ``$VAR/..`` depends on ``$VAR``)."""
    head = "/" if value.startswith("/") else ""
    parts = [p for p in value.split("/") if p not in ("", ".")]
    return head + "/".join(parts) if parts else (head or ".")


# --- finding the path fields of a config --------------------------------------------------------


def _marker(annotation: Any, metadata: list[Any]) -> SitePathMarker | None:
    """The SitePathMarker of a field, whether it sits in its metadata or inside ``X | None``."""
    for item in metadata:
        if isinstance(item, SitePathMarker):
            return item
    if typing.get_origin(annotation) is Annotated:
        return _marker(None, list(typing.get_args(annotation)[1:]))
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _marker(arg, [])
            if found is not None:
                return found
    return None


@functools.cache
def _field_markers(cls: type[BaseModel]) -> tuple[tuple[str, SitePathMarker | None], ...]:
    """Each field of ``cls`` with its path marker, found once per class: submit walks every
    point's config, and reading the annotations again for each was a third of a large dry run."""
    return tuple((name, _marker(field.annotation, field.metadata)) for name, field in cls.model_fields.items())


def _model_types(annotation: Any) -> Iterator[type[BaseModel]]:
    """The pydantic models an annotation can hold (``X``, ``list[X]``, ``X | None``, ``dict[str, X]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for arg in typing.get_args(annotation):
        yield from _model_types(arg)


@functools.cache
def _may_hold_paths(cls: type[BaseModel]) -> bool:
    """Whether a ``cls`` value can contain a path field at any depth: the walks skip the many
    sub-models that cannot (model shape, optimizer, schedule, ...)."""
    if any(marker is not None for _, marker in _field_markers(cls)):
        return True
    return any(_may_hold_paths(sub) for field in cls.model_fields.values() for sub in _model_types(field.annotation))


def iter_site_paths(model: BaseModel, prefix: str = "") -> Iterator[tuple[str, str]]:
    """``(dotted key, value)`` of every path field set in ``model`` (``data.sources[0].path``, ...)."""
    for name, marker in _field_markers(type(model)):
        value = getattr(model, name)
        key = f"{prefix}{name}"
        if marker is not None:
            if isinstance(value, str) and value not in marker.keywords:
                yield key, value
            continue
        yield from _walk_value(value, key)


def _walk_value(value: Any, key: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, BaseModel):
        if _may_hold_paths(type(value)):
            yield from iter_site_paths(value, f"{key}.")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _walk_value(item, f"{key}[{i}]")
    elif isinstance(value, dict):
        for k, item in value.items():
            yield from _walk_value(item, f"{key}.{k}")


def map_site_paths(model: M, change: Callable[[str, str], str], prefix: str = "") -> M:
    """A copy of ``model`` with every path field ``v`` (at dotted key ``k``) replaced by ``change(k, v)``."""
    update: dict[str, Any] = {}
    for name, marker in _field_markers(type(model)):
        value = getattr(model, name)
        key = f"{prefix}{name}"
        if marker is not None:
            if isinstance(value, str) and value not in marker.keywords:
                new = change(key, value)
                if new != value:
                    update[name] = new
            continue
        new_value = _map_value(value, change, key)
        if new_value is not value:
            update[name] = new_value
    return model.model_copy(update=update) if update else model


def _map_value(value: Any, change: Callable[[str, str], str], key: str) -> Any:
    if isinstance(value, BaseModel):
        return map_site_paths(value, change, f"{key}.") if _may_hold_paths(type(value)) else value
    if isinstance(value, list):
        items = [_map_value(item, change, f"{key}[{i}]") for i, item in enumerate(value)]
        return items if any(a is not b for a, b in zip(items, value, strict=True)) else value
    if isinstance(value, dict):
        mapped = {k: _map_value(item, change, f"{key}.{k}") for k, item in value.items()}
        return mapped if any(mapped[k] is not value[k] for k in value) else value
    return value


def expand_site_paths(model: M, source: str, environ: Mapping[str, str] | None = None) -> M:
    """``model`` with every path field expanded for this node (the engine calls this on ``run.yaml``)."""
    return map_site_paths(model, lambda key, value: expand_path(value, f"{source}: {key}", environ))


def resolve_on_login(model: M, roots: Mapping[str, str], where: str, owner: str) -> M:
    """What ``hpcllm submit`` writes into ``run.yaml``: every path field with ``{root}`` replaced by
    the profile's storage root and made absolute against this directory (the job starts elsewhere);
    ``$VAR`` and ``~`` stay for the compute node. ``owner`` names the profile in errors."""

    def resolve(key: str, value: str) -> str:
        resolved = substitute_roots(value, roots, f"{where}: {key}", owner)
        if "{account}" in resolved:
            raise ConfigError(
                f"{where}: {key}: {value!r} lies under a storage root of {owner} that needs an account: "
                "pass --account, export HPCLLM_ACCOUNT or set account: in the profile"
            )
        return absolute_on_login(resolved)

    return map_site_paths(model, resolve)

"""A job's config dataclass as argparse options: the one CLI mechanism of sae_flux, itda and cae.

The config dataclass *is* the CLI, the Python API and the saved record:

- one option per field, ``--field-name``; the field's docstring (the string literal under it)
  is its ``--help`` text, so the help never drifts from the code; ``list[...]`` / ``tuple[...]``
  fields take several values, ``bool`` fields are ``--flag`` / ``--no-flag``, ``Literal[...]``
  fields list their choices;
- a nested config dataclass becomes an argument group titled by its docstring; its options keep
  their plain names (``--lr``) unless a name occurs twice in the tree, then every occurrence is
  spelled with its path (``--vae.steps``, ``--flow.steps``); a nested field with
  ``metadata={PREFIX: "judge"}`` spells its options ``--judge-url``, ``--judge-model``, ...;
  a field with ``metadata={ALIASES: ("--timeout",)}`` also answers to the older spellings;
- ``--config-path FILE`` reads a saved record back (``train_config.json``, ``demo_config.json``,
  ``results.json``'s ``config``, ...: a JSON object of the fields, nested configs as nested
  objects, or such an object nested in the record): options given on the command line override
  it, fields it lacks keep their defaults, and a record of another config is refused in one line;
  ``dataclass_from_args(..., legacy=f)`` first passes each candidate record through ``f`` (a
  config whose layout changed reads its older records).

Light on purpose (standard library only): the three console scripts build their parsers from
it without importing torch. Why not ``simple_parsing`` (which SAELens uses): it spells negated
flags ``--noflag``, adds single-letter aliases of one-letter fields (``-k``) and prints each
config class's ``repr`` in ``--help``; the flags documented by this project stay as they are.

Example: ``sae-flux train``'s options come from :class:`sae_flux.train_config.TrainConfig`:

    >>> import argparse
    >>> from sae_flux.train_config import TrainConfig
    >>> parser = argparse.ArgumentParser()
    >>> add_dataclass_arguments(parser, TrainConfig)
    >>> cfg = dataclass_from_args(TrainConfig, parser.parse_args(["--out", "o", "--lr", "1e-3", "--k", "8"]))
    >>> cfg.out, cfg.optim.lr, cfg.sae.k, cfg.optim.batch_size
    ('o', 0.001, 8, 4096)
"""

from __future__ import annotations

import argparse
import ast
import collections
import dataclasses
import functools
import inspect
import json
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from _sae_flux_shared.usererror import UserError

T = TypeVar("T")

CONFIG_PATH = "config_path"
"""Destination of ``--config-path`` in the parsed namespace."""
_GIVEN = "_given_on_command_line"
PREFIX = "cli_prefix"
"""Metadata key of a nested config field: the word its options are spelled with (``--judge-url``)."""
ALIASES = "cli_aliases"
"""Metadata key of a field: further option strings it answers to (older spellings)."""


class ConfigFileError(UserError):
    """A ``--config-path`` file that cannot be read back as the command's config."""


@functools.cache
def _class_nodes(module_name: str) -> dict[str, ast.ClassDef]:
    """Every class of a module's source by qualified name; the source is parsed once per module."""
    try:
        tree = ast.parse(inspect.getsource(sys.modules[module_name]))
    except (OSError, TypeError, KeyError):
        return {}
    nodes: dict[str, ast.ClassDef] = {}

    def visit(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if isinstance(node, ast.ClassDef):
                nodes[prefix + node.name] = node
                visit(node.body, f"{prefix}{node.name}.")

    visit(tree.body, "")
    return nodes


def field_docs(cls: type) -> dict[str, str]:
    """``{field: docstring}`` read from the class source (empty when the source is unavailable).

    Example:
        >>> from itda.build_config import BuildConfig
        >>> field_docs(BuildConfig)["max_atoms"]
        'Size cap; the build stops reading once it is reached.'
    """
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):  # a subclass's docstring wins over its base's
        node = _class_nodes(klass.__module__).get(klass.__qualname__)
        body = node.body if node is not None else []
        for field, nxt in zip(body, body[1:], strict=False):
            if (
                isinstance(field, ast.AnnAssign)
                and isinstance(field.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[field.target.id] = " ".join(nxt.value.value.split())
    return docs


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(element type, is_sequence) of an annotation, dropping ``| None``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0])
    if origin in (list, tuple, typing.Sequence, collections.abc.Sequence):
        return typing.get_args(tp)[0], True
    return tp, False


@dataclasses.dataclass(frozen=True)
class _Spec:
    """One option: the field path in the config tree, its argparse dest and option string."""

    path: tuple[str, ...]
    dest: str
    flag: str
    required: bool
    aliases: tuple[str, ...] = ()


class _Given(argparse.Action):
    """Mixin recording which destinations the command line set (they beat ``--config-path``)."""

    def _mark(self, namespace: argparse.Namespace) -> None:
        given = set(getattr(namespace, _GIVEN, set()))
        given.add(self.dest)
        setattr(namespace, _GIVEN, given)


class _Store(_Given, argparse._StoreAction):
    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Any = None) -> None:
        super().__call__(parser, namespace, values, option_string)
        self._mark(namespace)


class _Flag(_Given, argparse.BooleanOptionalAction):
    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Any = None) -> None:
        super().__call__(parser, namespace, values, option_string)
        self._mark(namespace)


def _leaves(cls: type, path: tuple[str, ...] = (), prefix: str = "") -> list[_Leaf]:
    """Every non-dataclass field of a config tree, with its option name (``PREFIX`` applied)."""
    hints = typing.get_type_hints(cls)
    out = []
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        tp, _ = _base_type(hints[field.name])
        if dataclasses.is_dataclass(tp):
            word = field.metadata.get(PREFIX)
            out += _leaves(typing.cast(type, tp), (*path, field.name), f"{prefix}{word}_" if word else prefix)
        else:
            out.append(_Leaf((*path, field.name), prefix + field.name, field, hints[field.name], cls))
    return out


class _Leaf(typing.NamedTuple):
    """One field of a config tree that becomes an option."""

    path: tuple[str, ...]
    """Field names from the root config down to the field."""
    name: str
    """The option's name before spelling (``judge_url``: the field ``url`` under prefix ``judge``)."""
    field: dataclasses.Field[Any]
    """The dataclass field."""
    annotation: Any
    """Its resolved type annotation."""
    owner: type
    """The config class declaring it (its docstrings are the help)."""


def _default(field: dataclasses.Field[Any]) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def add_dataclass_arguments(
    parser: argparse.ArgumentParser,
    cls: type,
    positional: tuple[str, ...] = (),
    *,
    exclude: tuple[str, ...] = (),
) -> None:
    """Add one option per field of dataclass ``cls`` (nested configs as groups) and ``--config-path``.

    ``positional`` names top-level fields given as positionals; ``exclude`` names top-level fields
    left out (the command sets them itself).
    """
    leaves = [leaf for leaf in _leaves(cls) if leaf.path[0] not in exclude]
    counts = collections.Counter(leaf.name for leaf in leaves)
    groups: dict[tuple[str, ...], Any] = {}
    for leaf in leaves:
        path, field = leaf.path, leaf.field
        name = leaf.name if counts[leaf.name] == 1 or len(path) == 1 else ".".join(path)
        spec = _Spec(path, name if len(path) == 1 else ".".join(path), "--" + name.replace("_", "-"),
                     _default(field) is None and field.default is dataclasses.MISSING
                     and field.default_factory is dataclasses.MISSING, tuple(field.metadata.get(ALIASES, ())))
        if len(path) > 1 and path[:-1] not in groups:
            groups[path[:-1]] = _group(parser, leaf.owner, path[:-1])
        target = parser if len(path) == 1 else groups[path[:-1]]
        _add_option(target, spec, field, leaf.annotation, leaf.owner, positional)
    if not any(CONFIG_PATH == a.dest for a in parser._actions):
        parser.add_argument("--config-path", dest=CONFIG_PATH, default=None, metavar="FILE",
                            help="read a saved config of this command (JSON) back; options given here override it")


def _group(parser: argparse.ArgumentParser, owner: type, path: tuple[str, ...]) -> Any:
    doc = " ".join((inspect.getdoc(owner) or "").split("\n\n")[0].split())  # the first paragraph
    return parser.add_argument_group(f"{'.'.join(path)} ({owner.__name__})", doc or None)


def _add_option(target: Any, spec: _Spec, field: dataclasses.Field[Any], annotation: Any, owner: type,
                positional: tuple[str, ...]) -> None:
    tp, is_seq = _base_type(annotation)
    default = _default(field)
    help_text = field_docs(owner).get(field.name, "")
    if spec.required:
        help_text += " (required)"
    elif default is not None:
        help_text += f" (default: {list(default) if isinstance(default, tuple) else default})"
    kwargs: dict[str, Any] = {"help": help_text.replace("%", "%%")}  # argparse formats help with %
    if tp is bool:
        kwargs["action"] = _Flag
    else:
        kwargs["action"] = _Store
        if typing.get_origin(tp) is typing.Literal:
            kwargs["choices"] = list(typing.get_args(tp))
            kwargs["type"] = type(kwargs["choices"][0])
        else:
            kwargs["type"] = tp if tp in (int, float, str) else str
        if is_seq:
            kwargs["nargs"] = "+"
    if len(spec.path) == 1 and field.name in positional:
        target.add_argument(field.name, **kwargs)
        return
    if "choices" not in kwargs:
        kwargs["metavar"] = field.name.upper()
    target.add_argument(spec.flag, *spec.aliases, dest=spec.dest, default=default, **kwargs)


def dataclass_from_args(cls: type[T], args: argparse.Namespace,
                        legacy: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> T:
    """Build ``cls`` from the parsed options and ``--config-path`` (its ``__post_init__`` validates them).

    Precedence per field: the command line, then the ``--config-path`` file, then the default.
    A required field set by neither is refused in one line naming its option. ``legacy`` maps
    a record of an older layout of ``cls`` to the current one (records already current pass
    through unchanged).
    """
    saved = _saved_config(args, cls, legacy or (lambda record: record))
    return typing.cast(T, _build(cls, (), args, saved, getattr(args, _GIVEN, set())))


def _build(cls: type, path: tuple[str, ...], args: argparse.Namespace, saved: dict[str, Any],
           given: set[str]) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        tp, _ = _base_type(hints[field.name])
        sub = (*path, field.name)
        if dataclasses.is_dataclass(tp):
            kwargs[field.name] = _build(typing.cast(type, tp), sub, args, saved.get(field.name) or {}, given)
            continue
        dest = _dest(args, sub)
        if dest is not None and (dest in given or field.name not in saved):
            value = getattr(args, dest)
        elif field.name in saved:
            value = saved[field.name]
        else:
            continue  # not an option of this command: the dataclass default applies
        required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        if value is None and required:
            flag = "--" + (field.name if len(sub) == 1 else ".".join(sub)).replace("_", "-")
            raise ConfigFileError(f"{flag} is required (give it on the command line or in --config-path)")
        if isinstance(value, list) and typing.get_origin(_strip_none(hints[field.name])) is tuple:
            value = tuple(value)
        kwargs[field.name] = value
    return cls(**kwargs)


def _strip_none(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(tp) if a is not type(None))
    return tp


def _dest(args: argparse.Namespace, path: tuple[str, ...]) -> str | None:
    """The namespace attribute holding a field: its dotted path, or its plain name."""
    for name in (".".join(path), path[-1]):
        if name in vars(args):
            return name
    return None


def _saved_config(args: argparse.Namespace, cls: type,
                  legacy: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
    """The ``--config-path`` record as a dict of ``cls``'s fields (empty without the option).

    The record is the file's JSON object, or the first object nested in it (breadth first:
    ``results.json``'s ``config``, a ``cfg.json``'s ``metadata.itda_build``) whose keys are all
    fields of ``cls``.
    """
    path = getattr(args, CONFIG_PATH, None)
    if not path:
        return {}
    file = Path(path)
    try:
        record = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigFileError(f"--config-path {file}: no such file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigFileError(f"--config-path {file} is not a JSON file ({err})") from None
    if not isinstance(record, dict):
        raise ConfigFileError(f"--config-path {file} holds no JSON object")
    queue = [record]
    while queue:
        candidate = legacy(queue.pop(0))
        if not _unknown_keys(cls, candidate) and candidate:
            return candidate
        queue += [v for v in candidate.values() if isinstance(v, dict)]
    unknown = _unknown_keys(cls, record)
    raise ConfigFileError(f"--config-path {file} is no {cls.__name__} record: "
                          f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''} "
                          f"{'is no field' if len(unknown) == 1 else 'are no fields'} of it")


def _unknown_keys(cls: type, record: dict[str, Any], prefix: str = "") -> list[str]:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = [f"{prefix}{k}" for k in record if k not in fields]
    for name in fields:
        tp, _ = _base_type(hints[name])
        if dataclasses.is_dataclass(tp) and isinstance(record.get(name), dict):
            unknown += _unknown_keys(typing.cast(type, tp), record[name], f"{prefix}{name}.")
    return unknown

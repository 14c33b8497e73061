"""A job's config dataclass as argparse options: one definition for CLI, API and saved record.

Field docstrings (the string literal under each field) become the ``--help`` text, so the help
never drifts from the code. ``list[...]`` fields take several values, ``bool`` fields are flags.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import sys
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


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
    """``{field: docstring}`` read from the class source (empty when the source is unavailable)."""
    node = _class_nodes(cls.__module__).get(cls.__qualname__)
    body = node.body if node is not None else []
    docs: dict[str, str] = {}
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
    """(element type, is_list) of an annotation, dropping ``| None``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0])
    if origin in (list, tuple, typing.Sequence):
        return typing.get_args(tp)[0], True
    return tp, False


def add_dataclass_arguments(
    parser: argparse.ArgumentParser, cls: type, positional: tuple[str, ...] = ()
) -> None:
    """Add one option per field of dataclass ``cls`` (``positional`` names become positionals)."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for field in dataclasses.fields(cls):
        tp, is_list = _base_type(hints[field.name])
        if dataclasses.is_dataclass(tp):
            continue  # nested configs are set from Python or a saved record (never built here)
        default: Any = None
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        required = default is None and field.default is dataclasses.MISSING and (
            field.default_factory is dataclasses.MISSING
        )
        help_text = docs.get(field.name, "")
        if not required and default is not None:
            help_text += f" (default: {default})"
        kwargs: dict[str, Any] = {"help": help_text}
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = tp if tp in (int, float, str) else str
            if is_list:
                kwargs["nargs"] = "+"
        if field.name in positional:
            parser.add_argument(field.name, **kwargs)
        else:
            kwargs["dest"] = field.name
            kwargs["required"] = required
            kwargs["default"] = default if not required else None
            parser.add_argument("--" + field.name.replace("_", "-"), **kwargs)


def dataclass_from_args(cls: type[T], args: argparse.Namespace) -> T:
    """Build ``cls`` from the parsed options (its ``__post_init__`` validates them)."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values = {k: v for k, v in vars(args).items() if k in names}
    return cls(**values)

"""Typed model options: turn weaver's ``-o KEY VALUE`` keyword arguments into a validated dataclass.

weaver parses every ``-o`` value with ``ast.literal_eval`` and passes them (plus the injected ``for_inference``,
``use_amp`` and ``compile_model``) to ``get_model``. Unknown keys or values of the wrong type fail here with one line
that names the option and lists the valid ones, instead of a deep ``TypeError`` inside a constructor.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, TypeVar, Union

T = TypeVar("T")


class OptionError(ValueError):
    """A ``-o`` network option is unknown or has a value of the wrong type."""


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return "tuple"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any) -> tuple[bool, Any]:
    """Return (ok, value converted to ``tp``). Lists become tuples; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return True, value
    if tp is type(None):
        return value is None, value
    if origin is Literal:
        return value in typing.get_args(tp), value
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            ok, converted = _coerce(value, arg)
            if ok:
                return True, converted
        return False, value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False, value
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            items = [_coerce(v, args[0]) for v in value]
        elif args:
            if len(args) != len(value):
                return False, value
            items = [_coerce(v, a) for v, a in zip(value, args, strict=True)]
        else:
            return True, tuple(value)
        return all(ok for ok, _ in items), tuple(v for _, v in items)
    if origin is dict or tp is dict:
        return isinstance(value, dict), value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if tp is str:
        return isinstance(value, str), value
    return isinstance(value, tp), value


def option_names(cls: type) -> list[str]:
    """The option names a config dataclass accepts, in declaration order."""
    return [f.name for f in dataclasses.fields(cls) if f.init]


def from_options(cls: type[T], options: dict[str, Any], *, where: str, **fixed: Any) -> T:
    """Build the dataclass ``cls`` from weaver options; ``fixed`` are values derived from the data config.

    ``where`` names the network config in error messages (e.g. ``networks/part.py``).
    """
    hints = typing.get_type_hints(cls)
    valid = option_names(cls)
    kwargs: dict[str, Any] = {}
    for key, value in options.items():
        if key not in valid or key in fixed:
            settable = ", ".join(k for k in valid if k not in fixed)
            raise OptionError(f"{where}: unknown option {key!r}; valid options are: {settable}")
        ok, converted = _coerce(value, hints[key])
        if not ok:
            raise OptionError(
                f"{where}: option {key!r} expects {_type_name(hints[key])}, got {value!r} ({type(value).__name__})"
            )
        kwargs[key] = converted
    kwargs.update(fixed)
    return cls(**kwargs)

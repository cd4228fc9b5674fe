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

__all__ = ["OptionError", "config_with", "flat_options", "from_options", "option_fields"]

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


def _is_group(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def option_fields(cls: type) -> dict[str, tuple[str | None, type]]:
    """Every flat option name of a config: ``name -> (group field or None, dataclass that declares it)``.

    A config is a frozen dataclass whose fields are either options or *groups* (dataclass-typed fields, themselves
    configs). weaver's ``-o`` options are flat, so option names are unique across the groups of a config.
    """
    hints = typing.get_type_hints(cls)
    out: dict[str, tuple[str | None, type]] = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if _is_group(hints[f.name]):
            for name, (_, declared_by) in option_fields(hints[f.name]).items():
                if name in out:
                    raise TypeError(f"{cls.__name__}: option {name!r} is declared by two groups")
                out[name] = (f.name, declared_by)
        else:
            out[f.name] = (None, cls)
    return out


def _compose(cls: type[T], values: dict[str, Any]) -> T:
    """Build ``cls`` from flat ``values``: each group gets its own options, defaults fill the rest."""
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if _is_group(hints[f.name]):
            names = option_fields(hints[f.name])
            kwargs[f.name] = _compose(hints[f.name], {k: v for k, v in values.items() if k in names})
        elif f.name in values:
            kwargs[f.name] = values[f.name]
    return cls(**kwargs)


def from_options(cls: type[T], options: dict[str, Any], *, where: str, defaults: dict[str, Any] | None = None,
                 **fixed: Any) -> T:
    """Build the config ``cls`` from weaver options; ``fixed`` are values derived from the data config.

    ``defaults`` are a preset's own defaults (e.g. smaller models for detector hits), overridden by ``options``.
    ``where`` names the network config in error messages (e.g. ``networks/part.py``).
    """
    fields = option_fields(cls)
    settable = ", ".join(k for k in fields if k not in fixed)
    kwargs: dict[str, Any] = {}
    for key, value in {**(defaults or {}), **options}.items():
        if key not in fields or key in fixed:
            raise OptionError(f"{where}: unknown option {key!r}; valid options are: {settable}")
        tp = typing.get_type_hints(fields[key][1])[key]
        ok, converted = _coerce(value, tp)
        if not ok:
            raise OptionError(f"{where}: option {key!r} expects {_type_name(tp)}, "
                              f"got {value!r} ({type(value).__name__})")
        kwargs[key] = converted
    kwargs.update(fixed)
    return _compose(cls, kwargs)


def flat_options(cfg: Any) -> dict[str, Any]:
    """The flat option values of a (composed) config, the inverse of ``from_options``."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            out.update(flat_options(value))
        elif f.init:
            out[f.name] = value
    return out


def config_with(cfg: T, **changes: Any) -> T:
    """A copy of a (frozen, composed) config with some flat options changed."""
    fields = option_fields(type(cfg))
    unknown = [k for k in changes if k not in fields]
    if unknown:
        raise OptionError(f"{type(cfg).__name__}: unknown option {unknown[0]!r}")
    return _compose(type(cfg), {**flat_options(cfg), **changes})

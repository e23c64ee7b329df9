"""pydantic's validation errors as one-line :class:`ConfigError` messages: ``<key.path>: <problem>
(<allowed>)``, with the allowed values of a literal, the bounds of a number and did-you-mean for a key."""

from __future__ import annotations

import difflib
import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from .schema import ConfigError

_TYPE_WORDS = {
    "int": "an integer", "float": "a number", "bool": "true or false", "string": "a string",
    "dict": "a mapping", "model": "a mapping", "list": "a list",
}  # fmt: skip
_BOUNDS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}


def _to_config_error(exc: ValidationError, root: type[BaseModel], prefix: tuple = ()) -> ConfigError:
    """Turn pydantic's first error into ``<path>: <problem> (<allowed>)``."""
    err = exc.errors(include_url=False)[0]
    loc, kind, given = tuple(err["loc"]), err["type"], err.get("input")
    ctx = err.get("ctx") or {}
    path = _path(prefix + loc)
    if kind == "extra_forbidden":
        parent = _type_at(root, loc[:-1])
        fields = list(parent.model_fields) if _is_model(parent) else []
        close = difflib.get_close_matches(str(loc[-1]), fields, n=1)
        hint = f"did you mean {close[0]!r}?" if close else "allowed: " + ", ".join(fields)
        return ConfigError(f"{path}: unknown key ({hint})")
    allowed = _literal_values(_type_at(root, loc))
    if kind == "missing":
        return ConfigError(f"{path}: required" + (f" (allowed: {', '.join(allowed)})" if allowed else ""))
    if kind == "literal_error" and allowed:
        close = difflib.get_close_matches(str(given), allowed, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return ConfigError(f"{path}: {given!r} is not allowed ({hint}allowed: {', '.join(allowed)})")
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        bound = next(k for k in _BOUNDS if k in ctx)
        return ConfigError(f"{path}: must be {_BOUNDS[bound]} {ctx[bound]:g}, got {given!r}")
    base = kind.split("_")[0]
    if base in _TYPE_WORDS and kind.endswith(("_type", "_parsing", "_from_float", "_attributes_type")):
        return ConfigError(f"{path}: expected {_TYPE_WORDS[base]}, got {_short_repr(given)}")
    if kind == "value_error" and "error" in ctx:
        return ConfigError(f"{path}: {ctx['error']}")
    return ConfigError(f"{path}: {err['msg']}")


def _path(loc: tuple) -> str:
    out = ""
    for key in loc:
        out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else str(key))
    return out or "config"


def _unwrap(tp: Any) -> Any:
    """Strip Annotated and Optional so the model, list or Literal underneath is visible."""
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _type_at(root: Any, loc: tuple) -> Any:
    """The schema type at a pydantic error location, or None where the schema has no such key."""
    tp = root
    for key in loc:
        tp = _unwrap(tp)
        if _is_model(tp) and key in tp.model_fields:
            tp = tp.model_fields[key].annotation
        elif get_origin(tp) is list and isinstance(key, int):
            tp = get_args(tp)[0]
        else:
            return None
    return _unwrap(tp)


def _literal_values(tp: Any) -> list[str]:
    return [str(v) for v in get_args(tp)] if get_origin(tp) is Literal else []


def _short_repr(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__

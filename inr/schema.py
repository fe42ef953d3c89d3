"""Run folders are untrusted input: one small schema check for every JSON field a tool reads back.

A run folder (``inr eval``, ``inr merge``, ``--resume``, ``python -m approx pieces``) may have been edited,
truncated or crafted.  Every field is checked for its type and range *before* it is used, so a bad
folder gives one line naming the file and the field (:class:`SchemaError`, an
:class:`~inr.errors.InputError`), never a ``KeyError`` / ``TypeError`` traceback or a huge allocation::

    cfg = read_json(path)                                   # an object, at most MAX_JSON_BYTES
    check(cfg, {"widths": Field(list, items=Field(int, 1, 4096), min_len=2, max_len=64),
                "arch": Field(str, choices=("qnn", "mlp"), required=False, default="qnn")}, where=path)

Kinds: ``int`` (not bool), ``float`` (any finite JSON number), ``str``, ``bool``, ``dict``, ``list``;
``nullable`` accepts ``null`` too.  Unknown keys are left alone (a newer version may add fields).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError

MAX_JSON_BYTES = 64 * 1024 * 1024   # a run folder's JSON files are small; a larger one is refused unread


class SchemaError(InputError):
    """A run-folder file or field of the wrong type or out of range; the message names both."""


@dataclass(frozen=True)
class Field:
    """One field: its kind, an inclusive range (numbers; lengths via ``min_len``/``max_len``), allowed
    values, whether it must be present (else ``default``), ``null`` allowed, a spec for list items, and
    a nested schema for an object."""
    kind: type
    low: float | None = None
    high: float | None = None
    choices: tuple | None = None
    required: bool = True
    default: object = None
    nullable: bool = False
    items: "Field | None" = None
    min_len: int | None = None
    max_len: int | None = None
    fields: dict | None = None


_KIND = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "an object",
         list: "a list"}


def _describe(v) -> str:
    s = json.dumps(v, default=str) if not isinstance(v, (dict, list)) else type(v).__name__
    return s if len(s) <= 40 else s[:37] + "..."


def value(v, f: Field, where: str, name: str):
    """``v`` checked against ``f`` (ints stay ints, a float field accepts ints); raises :class:`SchemaError`."""
    def bad(what: str):
        raise SchemaError(f"{where}: field {name!r} {what}, got {_describe(v)}")

    if v is None:
        if f.nullable:
            return None
        bad(f"must be {_KIND.get(f.kind, f.kind.__name__)}, not null")
    if f.kind is int:
        if isinstance(v, bool) or not isinstance(v, int):
            bad("must be an integer")
    elif f.kind is float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            bad("must be a finite number")
        v = float(v)
    elif not isinstance(v, f.kind) or (f.kind is not bool and isinstance(v, bool)):
        bad(f"must be {_KIND.get(f.kind, f.kind.__name__)}")
    if f.kind in (int, float):
        if f.low is not None and v < f.low:
            bad(f"must be >= {f.low}")
        if f.high is not None and v > f.high:
            bad(f"must be <= {f.high}")
    if f.choices is not None and v not in f.choices:
        bad(f"must be one of {', '.join(map(str, f.choices))}")
    if f.kind in (list, str, dict):
        if f.min_len is not None and len(v) < f.min_len:
            bad(f"must have at least {f.min_len} entries")
        if f.max_len is not None and len(v) > f.max_len:
            bad(f"must have at most {f.max_len} entries")
    if f.kind is list and f.items is not None:
        v = [value(x, f.items, where, f"{name}[{i}]") for i, x in enumerate(v)]
    if f.kind is dict and f.fields is not None:
        v = check(v, f.fields, where, prefix=f"{name}.")
    return v


def check(obj, spec: dict, where, prefix: str = "") -> dict:
    """``obj`` (must be a JSON object) with every field of ``spec`` checked (:func:`value`); a missing
    optional field gets its default.  Returns a new dict (unknown keys copied unchanged)."""
    where = str(where)
    if not isinstance(obj, dict):
        raise SchemaError(f"{where}: {('field ' + repr(prefix.rstrip('.'))) if prefix else 'the file'} must be a "
                          f"JSON object, got {type(obj).__name__}")
    out = dict(obj)
    for key, f in spec.items():
        if key not in obj:
            if f.required:
                raise SchemaError(f"{where}: field {prefix + key!r} is missing")
            out[key] = f.default
            continue
        out[key] = value(obj[key], f, where, prefix + key)
    return out


def read_json(path: str | os.PathLike, what: str = "file", *, object_only: bool = True):
    """The JSON value in ``path`` (a missing, unreadable, oversized or invalid file -> :class:`SchemaError`;
    with ``object_only`` the top level must be an object)."""
    p = Path(path)
    try:
        if p.stat().st_size > MAX_JSON_BYTES:
            raise SchemaError(f"{p}: {p.stat().st_size:,} bytes, above the {MAX_JSON_BYTES:,} a run folder's "
                              f"{what} may have")
        data = json.loads(p.read_text(encoding="utf-8"), parse_constant=_no_constant)
    except SchemaError:
        raise
    except FileNotFoundError:
        raise SchemaError(f"{p}: missing") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise SchemaError(f"{p}: not a readable JSON {what} ({' '.join(str(e).split())[:200]})") from None
    if object_only and not isinstance(data, dict):
        raise SchemaError(f"{p}: the {what} must be a JSON object, got {type(data).__name__}")
    return data


def _no_constant(name: str):
    raise ValueError(f"non-standard JSON constant {name}")

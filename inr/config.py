"""Typed configs as nested dataclasses: to and from plain dicts, JSON/TOML files, and overrides.

Every tool has one config (``FitConfig``, ``SolveConfig``, ``CTConfig``, ``RungeConfig``, ...), a
dataclass whose fields may themselves be dataclasses (``FitConfig(model=ModelConfig(...),
train=TrainConfig(...))``).  It is built once -- from defaults, a ``--config FILE`` and the command line's
flags, in that order of precedence -- validated once (each dataclass's ``__post_init__``) and written to the
run's ``config.json``, from which the same run can be made again (``--config RUN/config.json``).

- :func:`to_dict` / :func:`from_dict`: nested dataclass <-> plain dict (lists become tuples where the field
  is a tuple; unknown keys are an :class:`~inr.errors.InputError` naming the key);
- :func:`read_file`: a JSON or TOML file (size-capped, untrusted: plain data only);
- :func:`merge`: a dict of overrides (nested, or flat ``"train.lr"`` / unique leaf names) onto a dict.
"""
from __future__ import annotations

import dataclasses
import json
import os
import typing
from pathlib import Path
from typing import Any

from .errors import InputError

MAX_CONFIG_BYTES = 1 << 20


def to_dict(cfg, skip: tuple = ()) -> dict:
    """A dataclass (nested) as a JSON-able dict; fields named in ``skip`` or whose metadata says
    ``runtime`` are left out (paths and switches of one process, not part of what a run is)."""
    out = {}
    for f in dataclasses.fields(cfg):
        if f.name in skip or f.metadata.get("runtime"):
            continue
        v = getattr(cfg, f.name)
        out[f.name] = to_dict(v, skip) if dataclasses.is_dataclass(v) else _plain(v)
    return out


def _plain(v):
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def _hints(cls) -> dict:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - forward references that cannot be resolved: take the raw strings
        return {f.name: f.type for f in dataclasses.fields(cls)}


def _dataclass_in(tp):
    """The dataclass type a field annotation names (``X`` or ``X | None``), else None."""
    if dataclasses.is_dataclass(tp):
        return tp
    for a in typing.get_args(tp):
        if dataclasses.is_dataclass(a):
            return a
    return None


def _wants_tuple(tp) -> bool:
    return tp is tuple or typing.get_origin(tp) is tuple or any(
        a is tuple or typing.get_origin(a) is tuple for a in typing.get_args(tp))


def from_dict(cls, data: dict, where: str = ""):
    """Build dataclass ``cls`` from ``data`` (nested dicts for nested dataclasses); unknown keys and
    wrong shapes are :class:`InputError` s naming the key."""
    if not isinstance(data, dict):
        raise InputError(f"config{(' ' + where) if where else ''}: expected a table of options, got "
                         f"{type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise InputError(f"config: unknown option {_key(where, unknown[0])!r}; {cls.__name__} takes: "
                         f"{', '.join(fields)}")
    hints = _hints(cls)
    kw = {}
    for k, v in data.items():
        tp = hints.get(k, fields[k].type)
        sub = _dataclass_in(tp)
        if sub is not None and isinstance(v, dict):
            kw[k] = from_dict(sub, v, _key(where, k))
        elif isinstance(v, list) and _wants_tuple(tp):
            kw[k] = tuple(tuple(x) if isinstance(x, list) else x for x in v)
        else:
            kw[k] = v
    try:
        return cls(**kw)
    except TypeError as e:   # a wrong type that the dataclass's own checks did not name
        raise InputError(f"config{(' ' + where) if where else ''}: {e}") from None


def _key(where: str, k: str) -> str:
    return f"{where}.{k}" if where else k


def read_file(path: str | os.PathLike) -> dict:
    """A config file: ``.toml`` (tomllib) or JSON (anything else); one :class:`InputError` for a missing,
    huge or malformed file."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"--config {p}: no such file")
    if p.stat().st_size > MAX_CONFIG_BYTES:
        raise InputError(f"--config {p}: larger than {MAX_CONFIG_BYTES} bytes; not a config file")
    text = p.read_bytes()
    try:
        if p.suffix.lower() == ".toml":
            import tomllib

            data = tomllib.loads(text.decode("utf-8"))
        else:
            data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"--config {p}: not valid {'TOML' if p.suffix.lower() == '.toml' else 'JSON'} "
                         f"({' '.join(str(e).split())[:200]})") from None
    if not isinstance(data, dict):
        raise InputError(f"--config {p}: expected a table of options at the top, got {type(data).__name__}")
    return data


def leaf_paths(cls, prefix: str = "") -> dict:
    """``{leaf name: dotted path}`` for every field of ``cls`` and its nested dataclasses.  A shallower
    field wins over a deeper one of the same name (``targets`` is ``FitConfig.targets``, not
    ``train.targets``); two at the same depth map to None (give it dotted)."""
    hints = _hints(cls)
    own, nested = {}, {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        path = _key(prefix, f.name)
        own[f.name] = path
        sub = _dataclass_in(hints.get(f.name, f.type))
        if sub is not None:
            for k, v in leaf_paths(sub, path).items():
                nested[k] = None if k in nested and nested[k] != v else v
    return {**nested, **own}


def merge(base: dict, overrides: dict, cls=None) -> dict:
    """``base`` with ``overrides`` applied.  A key may be dotted (``"train.lr"``) or, with ``cls``, a leaf
    name that occurs once in ``cls``'s tree (``"lr"``).  Nested dicts merge; other values replace."""
    out = json.loads(json.dumps(base))   # a deep copy of plain data
    paths = leaf_paths(cls) if cls is not None else {}
    for k, v in overrides.items():
        dotted = k if "." in k or cls is None else paths.get(k, k)
        if dotted is None:
            raise InputError(f"option {k!r} is ambiguous in {cls.__name__}; give its full path")
        node = out
        *parents, last = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise InputError(f"option {dotted!r}: {p} is not a table")
        if isinstance(v, dict) and isinstance(node.get(last), dict):
            node[last] = {**node[last], **v}
        else:
            node[last] = _plain(v)
    return out


def build(cls, overrides: dict | None = None, file: str | os.PathLike | None = None) -> Any:
    """``cls`` from its defaults, then ``file`` (JSON/TOML), then ``overrides``: validated once."""
    base = to_dict(cls())
    if file is not None:
        base = merge(base, read_file(file))
    return from_dict(cls, merge(base, overrides or {}, cls))

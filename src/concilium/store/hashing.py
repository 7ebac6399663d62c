"""Stable identities for stored things: canonical JSON and its sha256.

An explanation entry is identified by ``(source, method, params_hash)``, where ``params_hash`` is
the sha256 of the canonical JSON of the fully resolved parameters (sorted keys, no whitespace),
shortened to 16 hex digits (64 bits: a collision needs ~4e9 entries in one run).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

HASH_LENGTH = 16


def _plain(value: Any, where: str) -> Any:
    """Convert ``value`` into plain JSON types, or raise naming the offending key."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"parameter {where} is {value}; only finite numbers can be hashed")
        return float(value)
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"parameter keys must be strings; got {k!r} in {where or 'params'}")
            out[k] = _plain(v, f"{where}.{k}" if where else k)
        return out
    if isinstance(value, list | tuple):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    # numpy / torch scalars
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "ndim", None) == 0:
        return _plain(item(), where)
    raise TypeError(
        f"parameter {where or 'params'} has type {type(value).__name__}, which has no stable "
        "JSON form; pass numbers, strings, booleans, None, lists or dicts (describe tensors by "
        "a name or a hash)"
    )


def canonical_json(params: Mapping[str, Any]) -> str:
    """The canonical JSON text of ``params``: sorted keys, no whitespace, tuples as lists.

    Raises:
        TypeError: if a value is not a plain JSON type (the message names the key).
        ValueError: if a float is NaN or infinite.

    Example:
        >>> canonical_json({"b": (1, 2), "a": 0.5})
        '{"a":0.5,"b":[1,2]}'
    """
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a mapping of str to JSON values; got {type(params).__name__}")
    return json.dumps(_plain(params, ""), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def params_hash(params: Mapping[str, Any]) -> str:
    """sha256 of :func:`canonical_json`, first 16 hex digits.

    Example:
        >>> params_hash({"steps": 50}) == params_hash({"steps": 50.0})
        False
        >>> len(params_hash({}))
        16
    """
    return hashlib.sha256(canonical_json(params).encode()).hexdigest()[:HASH_LENGTH]

"""What a config knob is, independent of which knobs there are: a dataclass field with its doc and valid
range (`knob`), the check of a value against it (`coerce`), comma-separated number knobs and the stable hash
that names a config. `raycredit.config` declares the knobs with these."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import field
from typing import Any

from raycredit.errors import ConfigError


def knob(default: Any, doc: str, *, choices=None, lo=None, hi=None, lo_open=False, hi_open=False):
    """A config field with its one-line doc and valid range (bounds inclusive unless *_open)."""
    return field(
        default=default,
        metadata={"doc": doc, "choices": choices, "lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open},
    )


def field_type(f: dataclasses.Field) -> type:
    return f.type if isinstance(f.type, type) else {"int": int, "float": float, "bool": bool, "str": str}[f.type]


def coerce(key: str, value: Any, f: dataclasses.Field) -> Any:
    """Return value coerced to the field's type, or raise ConfigError naming key."""
    want = field_type(f)
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(value, bool) and want is not bool or not isinstance(value, want):
        raise ConfigError(f"{key}: expected {want.__name__}, got {type(value).__name__} {value!r}")
    m = f.metadata
    if m["choices"] is not None and value not in m["choices"]:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, m['choices']))}")
    if want in (int, float):
        if value != value:
            raise ConfigError(f"{key}: NaN is not allowed")
        if want is float and not math.isfinite(value):
            raise ConfigError(f"{key}: {value!r} is not finite")
        lo, hi = m["lo"], m["hi"]
        if lo is not None and (value <= lo if m["lo_open"] else value < lo):
            raise ConfigError(f"{key}: {value!r} must be {'>' if m['lo_open'] else '>='} {lo}")
        if hi is not None and (value >= hi if m["hi_open"] else value > hi):
            raise ConfigError(f"{key}: {value!r} must be {'<' if m['hi_open'] else '<='} {hi}")
    return value


def number_list(key: str, text: str, kind: type, *, lo, need: bool = False) -> list:
    """The numbers of a comma-separated knob, sorted and distinct; ConfigError naming key when malformed."""
    try:
        values = sorted({kind(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise ConfigError(f"{key}: {text!r} is not a comma-separated list of {kind.__name__}s") from None
    if need and not values:
        raise ConfigError(f"{key}: needs at least one value")
    bad = [v for v in values if not math.isfinite(v) or (v <= lo if kind is float else v < lo)]
    if bad:
        raise ConfigError(f"{key}: {bad[0]!r} must be {'>' if kind is float else '>='} {lo}")
    return values


def stable_hash(obj: Any) -> str:
    """16 hex digits of the SHA-256 of obj's canonical JSON."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]

"""One checker for typed values: hyperparameters (config.py) and run settings (runs/settings.py).

A value is checked against its dataclass annotation ("int", "float | None", ...), then its choices or
its range. Every error is one line that names the value, what was given and what is allowed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..errors import UserError

_SCALARS = (bool, int, float, str)


@dataclass(frozen=True)
class Bounds:
    """An interval; None leaves that side open."""

    low: float | None = None
    high: float | None = None
    low_inclusive: bool = True
    high_inclusive: bool = True

    def admits(self, value: float) -> bool:
        above = self.low is None or (value >= self.low if self.low_inclusive else value > self.low)
        below = self.high is None or (value <= self.high if self.high_inclusive else value < self.high)
        return above and below

    def describe(self) -> str:
        parts = []
        if self.low is not None:
            parts.append(f"{'>=' if self.low_inclusive else '>'} {self.low}")
        if self.high is not None:
            parts.append(f"{'<=' if self.high_inclusive else '<'} {self.high}")
        return " and ".join(parts)


def scalar_type(annotation: str) -> type:
    """The scalar type an annotation names first (`float` for "float | None")."""
    for kind in _SCALARS:
        if annotation.startswith(kind.__name__):
            return kind
    raise AssertionError(f"unhandled annotation {annotation!r}")


def is_optional(annotation: str) -> bool:
    return "None" in annotation


def check_value(name: str, value: Any, annotation: str, *, choices=None, bounds: Bounds | None = None) -> Any:
    """Raise UserError unless `value` fits `annotation`, `choices` and `bounds`; return it (an int as float
    where a float is due: 1 from JSON or a flag means 1.0)."""
    kind, optional = scalar_type(annotation), is_optional(annotation)
    if value is None and optional:
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise UserError(f"{name} must be {kind.__name__}{' or None' if optional else ''}, but got {value!r}")
    if kind is float and not math.isfinite(value):
        raise UserError(f"{name} must be a finite number, but got {value!r}")
    if choices is not None and value not in choices:
        raise UserError(f"{name} {value!r} is not allowed; choose one of {', '.join(choices)}")
    if bounds is not None and not bounds.admits(value):
        raise UserError(f"{name} must be {bounds.describe()}, but got {value!r}")
    return value

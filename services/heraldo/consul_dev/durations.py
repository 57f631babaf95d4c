"""Go-style durations ("10s", "1m30s", "250ms"), as Consul reads and prints them."""

from __future__ import annotations

import re
from typing import Any

from heraldo.consul_dev.errors import InvalidRequest

_DURATION_UNITS_S = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(value: Any, field: str) -> float:
    """Return a Go duration ("10s", "1m30s", "250ms") or a count of nanoseconds, in seconds.

    Raises:
        InvalidRequest: the value is neither.
    """
    if value is None or value == "":
        return 0.0
    if isinstance(value, bool):
        raise InvalidRequest(f"Request decode failed: {field}: invalid duration {value!r}")
    if isinstance(value, int | float):
        return float(value) / 1e9
    if not isinstance(value, str):
        raise InvalidRequest(f"Request decode failed: {field}: invalid duration {value!r}")

    text = value.strip()
    sign = -1.0 if text.startswith("-") else 1.0
    text = text.lstrip("+-")
    if text == "0":
        return 0.0
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        raise InvalidRequest(f'Request decode failed: time: invalid duration "{value}"')
    return sign * sum(float(number) * _DURATION_UNITS_S[unit] for number, unit in parts)


def format_duration(seconds: float) -> str:
    """Format seconds the way Go prints a time.Duration ("10s", "1m0s", "500ms")."""
    if seconds == 0:
        return "0s"
    nanos = round(abs(seconds) * 1e9)
    sign = "-" if seconds < 0 else ""
    if nanos < 1_000:
        return f"{sign}{nanos}ns"
    if nanos < 1_000_000:
        return f"{sign}{_trim(nanos / 1e3)}µs"
    if nanos < 1_000_000_000:
        return f"{sign}{_trim(nanos / 1e6)}ms"

    hours, rest = divmod(nanos, 3_600 * 10**9)
    minutes, rest = divmod(rest, 60 * 10**9)
    text = f"{_trim(rest / 1e9)}s"
    if hours or minutes:
        text = f"{minutes}m{text}"
    if hours:
        text = f"{hours}h{text}"
    return sign + text


def _trim(number: float) -> str:
    return f"{number:.9f}".rstrip("0").rstrip(".")

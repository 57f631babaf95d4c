"""Settings: defaults from the KV seed, overridden by Consul KV, overridden by the environment.

Keys live in Consul KV as ``config/application/<name>`` (shared by every service) and
``config/<service>/<name>`` (one service), like Spring Cloud Config's shared and per-service files.
The environment variable ``HERALDO_<NAME>`` (upper case) wins over both. Values are validated when
loaded; a bad value in KV is logged with its key and ignored, so the last good settings stay.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

from heraldo.errors import ConfigError

logger = logging.getLogger(__name__)

#: The seed file holding every default; ``HERALDO_KV_SEED`` points elsewhere.
DEFAULT_SEED_PATH = Path(__file__).resolve().parents[2] / "consul" / "kv.json"
KV_PREFIX = "config/"
SHARED_SCOPE = "application"

SettingsT = TypeVar("SettingsT")


def seed_path() -> Path:
    return Path(os.environ.get("HERALDO_KV_SEED", DEFAULT_SEED_PATH))


def load_seed(path: Path | None = None) -> dict[str, str]:
    """Reads the KV seed: a JSON object of ``key: string value``.

    Raises:
        ConfigError: the file is missing or is not such an object.
    """
    path = path or seed_path()
    try:
        seed = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the KV seed {path}: {exc}") from exc
    if not isinstance(seed, dict) or not all(isinstance(v, str) for v in seed.values()):
        raise ConfigError(f"the KV seed {path} must be a JSON object of string values")
    return seed


def convert(raw: str, target: type, key: str) -> Any:
    """``raw`` as a value of ``target`` (bool, int, float or str).

    Raises:
        ConfigError: naming ``key``, when ``raw`` is not such a value (floats must be finite).
    """
    try:
        if target is bool:
            lowered = raw.strip().lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError("expected true or false")
            return lowered in ("true", "1", "yes")
        if target is int:
            return int(raw)
        if target is float:
            value = float(raw)
            # float() also reads "nan", "inf" and 1e400: none is a usable duration or rate.
            if not math.isfinite(value):
                raise ValueError("not a finite number")
            return value
        return raw
    except ValueError as exc:
        expected = {int: "a whole number", float: "a finite number"}.get(target)
        problem = f"expected {expected}" if expected else str(exc)
        raise ConfigError(f"{key}={raw!r}: {problem}") from exc


def resolve(
    settings_cls: type[SettingsT],
    service: str,
    kv: Mapping[str, str],
    env: Mapping[str, str] | None = None,
    *,
    fallback: SettingsT | None = None,
) -> SettingsT:
    """Builds ``settings_cls`` from KV entries and the environment.

    Each field ``name`` reads ``config/application/name``, then ``config/<service>/name``, then
    ``HERALDO_NAME``. A KV value that does not convert or validate is logged with its key and the
    field keeps its ``fallback`` value (the last good settings); a bad environment value is an
    error, because the operator just typed it.

    Raises:
        ConfigError: a value from the environment is invalid, or a field has no value at all.
    """
    env = os.environ if env is None else env
    hints = get_type_hints(settings_cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(settings_cls):  # type: ignore[arg-type]
        target = hints[field.name]
        shared_key = f"{KV_PREFIX}{SHARED_SCOPE}/{field.name}"
        for key in (shared_key, f"{KV_PREFIX}{service}/{field.name}"):
            if key not in kv:
                continue
            try:
                values[field.name] = convert(kv[key], target, key)
            except ConfigError as exc:
                logger.warning("ignoring bad setting key=%s: %s", key, exc)
        env_key = f"HERALDO_{field.name.upper()}"
        if env_key in env:
            values[field.name] = convert(env[env_key], target, env_key)
        if field.name not in values and fallback is not None:
            values[field.name] = getattr(fallback, field.name)

    try:
        settings = settings_cls(**values)
    except TypeError as exc:
        raise ConfigError(f"{settings_cls.__name__}: {exc}") from exc
    except ValueError as exc:
        if fallback is None:
            raise ConfigError(f"{settings_cls.__name__}: {exc}") from exc
        logger.warning("ignoring bad settings for service=%s: %s", service, exc)
        return fallback
    return settings


def positive(name: str, value: float) -> None:
    """Validation helper for ``__post_init__``: raises ValueError naming the field."""
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")


def not_negative(name: str, value: float) -> None:
    """Validation helper for ``__post_init__``: raises ValueError naming the field."""
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    if value < 0:
        raise ValueError(f"{name} must not be negative, got {value}")

"""Heraldo's exception tree, and the one place that turns it into gRPC status codes.

    HeraldoError
    ├── InvalidArgument      the caller sent something unusable (names the field)
    ├── NotFound             the named resource does not exist
    ├── FailedPrecondition   the request is valid but not in the resource's current state
    │   └── Conflict         it collides with what exists (a completed or running job instance)
    ├── Unavailable          a dependency (Consul, the database, the mesh) cannot be reached
    └── ConfigError          a setting is missing or has a bad value
"""

from __future__ import annotations

import grpc


class HeraldoError(Exception):
    """Root of every error Heraldo raises on purpose."""

    status_code = grpc.StatusCode.INTERNAL


class InvalidArgument(HeraldoError):
    """A request field is missing or has a bad value."""

    status_code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class NotFound(HeraldoError):
    status_code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(HeraldoError):
    status_code = grpc.StatusCode.FAILED_PRECONDITION


class Conflict(FailedPrecondition):
    """ALREADY_EXISTS rather than FAILED_PRECONDITION: Envoy's transcoder maps it to HTTP 409,
    which is what REST clients expect for "this job instance already ran"."""

    status_code = grpc.StatusCode.ALREADY_EXISTS


class Unavailable(HeraldoError):
    status_code = grpc.StatusCode.UNAVAILABLE


class ConfigError(HeraldoError):
    """A setting is missing or has a bad value; the message names the key."""

    status_code = grpc.StatusCode.FAILED_PRECONDITION

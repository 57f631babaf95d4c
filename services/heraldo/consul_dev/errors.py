"""Errors of the Consul development stand-in, each carrying the HTTP status Consul answers with.

ConsulDevError          500, like an unexpected failure inside a Consul agent
├── InvalidRequest      400: a malformed body, query parameter or definition
└── UnknownResource     404: the named service, check or key does not exist
"""

from __future__ import annotations


class ConsulDevError(Exception):
    """Root of the errors the stand-in raises on purpose; the message is the response body."""

    status = 500


class InvalidRequest(ConsulDevError):
    """The request cannot be used as sent; Consul answers 400 with a plain-text reason."""

    status = 400


class UnknownResource(ConsulDevError):
    """The request names something the agent does not have; Consul answers 404."""

    status = 404

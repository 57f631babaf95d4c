"""Job parameters: validated once at the edge of the service, then carried as a plain value."""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import asdict, dataclass

from heraldo.batch.settings import MAX_CHUNK_SIZE, MAX_PARTITIONS
from heraldo.convert import date_from_proto, date_to_proto
from heraldo.errors import InvalidArgument
from heraldo.v1 import batch_pb2, notification_pb2

JOB_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")
#: What selects the invoices. The template, chunk size, partitions and skip limit only change
#: how they are sent, so they are left out: a different template for the same selection is the
#: same instance, refused once it completed unless a new instance is asked for.
IDENTIFYING_PARAMS = ("issued_from", "issued_to", "kinds", "countries")

KIND_NAMES = {
    notification_pb2.DOCUMENT_KIND_INVOICE: "invoice",
    notification_pb2.DOCUMENT_KIND_CREDIT_NOTE: "credit_note",
}
KIND_VALUES = {name: value for value, name in KIND_NAMES.items()}


@dataclass(frozen=True)
class JobParams:
    issued_from: dt.date | None = None
    issued_to: dt.date | None = None
    kinds: tuple[str, ...] = ("invoice",)
    countries: tuple[str, ...] = ()
    template: str = ""
    chunk_size: int = 0
    #: Skips allowed before the job fails; -1 means no limit. Resolved from the configured
    #: default when the job starts, so every replica and every restart applies the same limit.
    skip_limit: int = -1
    partitions: int = 0

    def identity_key(self) -> str:
        """Canonical JSON of what identifies the job instance: same selection, same instance."""
        values = {name: getattr(self, name) for name in IDENTIFYING_PARAMS}
        return json.dumps(values, default=str, sort_keys=True, separators=(",", ":"))

    def to_json(self) -> str:
        values = asdict(self)
        return json.dumps(values, default=str, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> JobParams:
        values = json.loads(text)
        for name in ("issued_from", "issued_to"):
            if values.get(name):
                values[name] = dt.date.fromisoformat(values[name])
        values["kinds"] = tuple(values.get("kinds", ("invoice",)))
        values["countries"] = tuple(values.get("countries", ()))
        return cls(**values)

    def to_proto(self) -> batch_pb2.JobParameters:
        return batch_pb2.JobParameters(
            issued_from=date_to_proto(self.issued_from), issued_to=date_to_proto(self.issued_to),
            kinds=[KIND_VALUES[kind] for kind in self.kinds], countries=list(self.countries),
            template=self.template, chunk_size=self.chunk_size,
            skip_limit=self.skip_limit, partitions=self.partitions)


def validate_job_name(name: str) -> str:
    if not name:
        raise InvalidArgument("job_name", "is required")
    if not JOB_NAME_PATTERN.match(name):
        # A long name is shown cut: the message should fit on a line.
        shown = repr(name) if len(name) <= 100 else f"{name[:60]!r}... ({len(name)} characters)"
        raise InvalidArgument(
            "job_name", f"{shown} must be 1-100 lower-case letters, digits, '.', '_' or '-'")
    return name


def parse_params(message: batch_pb2.JobParameters, *, templates: frozenset[str],
                 default_skip_limit: int = -1) -> JobParams:
    """Raises InvalidArgument naming the first bad parameter."""
    try:
        issued_from = date_from_proto(message.issued_from, "parameters.issued_from")
        issued_to = date_from_proto(message.issued_to, "parameters.issued_to")
    except ValueError as exc:
        field_name, _, problem = str(exc).partition(": ")
        raise InvalidArgument(field_name, problem) from exc
    if issued_from and issued_to and issued_from > issued_to:
        raise InvalidArgument("parameters.issued_to",
                              f"{issued_to} is before issued_from {issued_from}")

    kinds = []
    for kind in message.kinds:
        if kind not in KIND_NAMES:
            raise InvalidArgument("parameters.kinds", f"unknown document kind {kind}")
        kinds.append(KIND_NAMES[kind])
    countries = tuple(sorted({country.strip() for country in message.countries}))
    if any(not country for country in countries):
        raise InvalidArgument("parameters.countries", "a country may not be empty")
    if message.template and message.template not in templates:
        raise InvalidArgument("parameters.template",
                              f"unknown template {message.template!r}; known: "
                              + ", ".join(sorted(templates)))
    if not 0 <= message.chunk_size <= MAX_CHUNK_SIZE:
        raise InvalidArgument("parameters.chunk_size",
                              f"must be between 1 and {MAX_CHUNK_SIZE} (0 for the default), "
                              f"got {message.chunk_size}")
    skip_limit = default_skip_limit
    if message.HasField("skip_limit"):
        if message.skip_limit < -1:
            raise InvalidArgument("parameters.skip_limit",
                                  f"must be 0 or more, or -1 for no limit; got "
                                  f"{message.skip_limit}")
        skip_limit = message.skip_limit
    if not 0 <= message.partitions <= MAX_PARTITIONS:
        raise InvalidArgument("parameters.partitions",
                              f"must be between 1 and {MAX_PARTITIONS} (0 for the default), "
                              f"got {message.partitions}")
    return JobParams(issued_from=issued_from, issued_to=issued_to,
                     kinds=tuple(sorted(set(kinds))) or ("invoice",), countries=countries,
                     template=message.template, chunk_size=message.chunk_size,
                     skip_limit=skip_limit, partitions=message.partitions)

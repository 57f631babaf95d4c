"""Settings of the batch service (``config/batch/*`` over ``config/application/*``)."""

from __future__ import annotations

from dataclasses import dataclass

from heraldo.settings import not_negative, positive

#: The largest chunk and the most partitions a job may ask for, or the settings give.
MAX_CHUNK_SIZE = 10_000
MAX_PARTITIONS = 256
#: The most jobs one ListJobs page holds.
MAX_PAGE_SIZE = 500


@dataclass(frozen=True)
class BatchSettings:
    log_level: str = "INFO"
    check_interval_s: float = 2.0
    deregister_critical_after_s: float = 30.0
    shutdown_grace_s: float = 10.0
    #: Invoices per chunk when a job does not say; also the commit interval.
    chunk_size: int = 500
    #: One stream sticks to one notifier replica, so a chunk goes out over several streams.
    streams_per_chunk: int = 6
    #: Envoy's mesh listener, which balances the streams over the notifier replicas.
    mesh_address: str = "127.0.0.1:9090"
    stream_timeout_s: float = 120.0
    #: Attempts per notification for temporary failures (mesh unavailable, SMTP 4xx).
    max_attempts: int = 10
    retry_backoff_s: float = 0.5
    #: Cap of the exponential backoff between attempts.
    retry_backoff_max_s: float = 8.0
    #: Template sets the notifiers know; a job naming another one is refused.
    templates: str = "invoice"
    #: How often a replica renews the leases of the partitions it runs.
    heartbeat_interval_s: float = 5.0
    #: A lease not renewed for this long belongs to a dead replica, and is taken over. It must
    #: exceed the longest chunk a replica may be blocked on, or live partitions get taken over
    #: (harmless for mail, which is deduplicated, but wasted work).
    stale_after_s: float = 30.0
    #: Partitions a job is split into when it does not say; each is claimed by one replica.
    partitions: int = 8
    #: Partitions one replica runs at the same time.
    max_partitions: int = 4
    #: How often an idle replica looks for partitions to claim.
    poll_interval_s: float = 1.0
    #: Skips allowed per job when it does not say; -1 means no limit.
    skip_limit: int = -1

    def __post_init__(self) -> None:
        for name in ("check_interval_s", "deregister_critical_after_s", "chunk_size",
                     "streams_per_chunk", "stream_timeout_s", "max_attempts",
                     "heartbeat_interval_s", "stale_after_s", "partitions", "max_partitions",
                     "poll_interval_s"):
            positive(name, getattr(self, name))
        for name, most in (("chunk_size", MAX_CHUNK_SIZE), ("partitions", MAX_PARTITIONS)):
            if getattr(self, name) > most:
                raise ValueError(f"{name} must be at most {most}, as a job's own is")
        if self.stale_after_s <= self.heartbeat_interval_s:
            raise ValueError("stale_after_s must exceed heartbeat_interval_s, or every lease "
                             "looks dead between two heartbeats")
        if self.skip_limit < -1:
            raise ValueError("skip_limit must be -1 (no limit) or more")
        not_negative("retry_backoff_s", self.retry_backoff_s)
        if ":" not in self.mesh_address:
            raise ValueError(f"mesh_address must be host:port, got {self.mesh_address!r}")

    @property
    def template_names(self) -> frozenset[str]:
        return frozenset(name.strip() for name in self.templates.split(",") if name.strip())

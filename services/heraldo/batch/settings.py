"""Settings of the batch service (``config/batch/*`` over ``config/application/*``)."""

from __future__ import annotations

from dataclasses import dataclass

from heraldo.settings import positive


@dataclass(frozen=True)
class BatchSettings:
    log_level: str = "INFO"
    check_interval_s: float = 2.0
    deregister_critical_after_s: float = 30.0
    shutdown_grace_s: float = 10.0
    #: Invoices per chunk when a job does not say; also the commit interval.
    chunk_size: int = 200
    #: One stream sticks to one notifier replica, so a chunk goes out over several streams.
    streams_per_chunk: int = 6
    #: Envoy's mesh listener, which balances the streams over the notifier replicas.
    mesh_address: str = "127.0.0.1:9090"
    stream_timeout_s: float = 120.0
    #: Attempts per notification for temporary failures (mesh unavailable, SMTP 4xx).
    max_attempts: int = 3
    retry_backoff_s: float = 0.5
    #: Template sets the notifiers know; a job naming another one is refused.
    templates: str = "invoice"
    #: How often a running execution proves it is alive.
    heartbeat_interval_s: float = 5.0

    def __post_init__(self) -> None:
        for name in ("check_interval_s", "deregister_critical_after_s", "chunk_size",
                     "streams_per_chunk", "stream_timeout_s", "max_attempts",
                     "heartbeat_interval_s"):
            positive(name, getattr(self, name))
        if self.retry_backoff_s < 0:
            raise ValueError("retry_backoff_s must not be negative")
        if ":" not in self.mesh_address:
            raise ValueError(f"mesh_address must be host:port, got {self.mesh_address!r}")

    @property
    def template_names(self) -> frozenset[str]:
        return frozenset(name.strip() for name in self.templates.split(",") if name.strip())

"""Settings of the control plane (``config/controlplane/*`` over ``config/application/*``)."""

from __future__ import annotations

from dataclasses import dataclass

from heraldo.settings import not_negative, positive


def parse_cluster_services(raw: str) -> dict[str, str]:
    """``"notifier=heraldo-notifier,batch=heraldo-batch"`` to ``{cluster: Consul service}``.

    Raises:
        ValueError: an entry is not ``cluster=service`` or a cluster appears twice.
    """
    mapping: dict[str, str] = {}
    for item in raw.split(","):
        if not item.strip():
            continue
        cluster, sep, service = (part.strip() for part in item.partition("="))
        if not sep or not cluster or not service:
            raise ValueError(f"cluster_services entry {item.strip()!r} is not cluster=service")
        if cluster in mapping:
            raise ValueError(f"cluster_services names cluster {cluster!r} twice")
        mapping[cluster] = service
    if not mapping:
        raise ValueError("cluster_services must name at least one cluster=service")
    return mapping


@dataclass(frozen=True)
class ControlPlaneSettings:
    log_level: str = "INFO"
    check_interval_s: float = 2.0
    deregister_critical_after_s: float = 30.0
    shutdown_grace_s: float = 10.0
    #: Envoy cluster name = Consul service name, comma separated; Envoy's bootstrap must declare
    #: each cluster as EDS over ADS.
    cluster_services: str = "notifier=heraldo-notifier,batch=heraldo-batch"
    #: How long one blocking query waits in Consul; a change answers it at once.
    blocking_wait_s: float = 30.0
    #: First delay after a failed Consul query; it doubles per failure up to the maximum.
    consul_retry_backoff_s: float = 0.5
    consul_retry_backoff_max_s: float = 10.0
    #: After Consul comes back from an outage, how long endpoints are only added, never removed:
    #: long enough for every service to register again and pass a check (re-registration runs
    #: every 5 s, checks every check_interval_s).
    recovery_grace_s: float = 12.0

    def __post_init__(self) -> None:
        for name in ("check_interval_s", "deregister_critical_after_s", "blocking_wait_s",
                     "consul_retry_backoff_s", "consul_retry_backoff_max_s", "recovery_grace_s"):
            positive(name, getattr(self, name))
        not_negative("shutdown_grace_s", self.shutdown_grace_s)
        if self.consul_retry_backoff_max_s < self.consul_retry_backoff_s:
            raise ValueError("consul_retry_backoff_max_s must not be below consul_retry_backoff_s")
        # Consul caps a blocking query's wait at ten minutes.
        if self.blocking_wait_s > 600:
            raise ValueError(f"blocking_wait_s must be at most 600, got {self.blocking_wait_s}")
        parse_cluster_services(self.cluster_services)

    @property
    def services(self) -> dict[str, str]:
        return parse_cluster_services(self.cluster_services)

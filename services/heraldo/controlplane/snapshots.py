"""The endpoints the control plane serves, one versioned snapshot for every Envoy stream.

The Consul watcher (or a test) writes each cluster's endpoints here; every real change bumps the
version and wakes the ADS streams, which turn the snapshot into ``ClusterLoadAssignment``
resources. Writing the same endpoints again changes nothing, so a blocking query that returns
without a change costs Envoy nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from envoy.config.core.v3 import address_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2

logger = logging.getLogger(__name__)


@dataclass(frozen=True, order=True)
class Endpoint:
    """One replica Envoy may send traffic to; ``host`` must be an IP address for EDS."""

    host: str
    port: int
    instance_id: str = ""

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Snapshot:
    """An immutable view: version 0 means nothing is known yet and nothing should be served."""

    version: int
    clusters: Mapping[str, tuple[Endpoint, ...]]

    def select(self, names: Iterable[str]) -> dict[str, tuple[Endpoint, ...]]:
        """The clusters a stream subscribed to; no names is a wildcard subscription (all)."""
        wanted = set(names)
        if not wanted:
            return dict(self.clusters)
        return {name: eps for name, eps in self.clusters.items() if name in wanted}


def load_assignment(
    cluster: str, endpoints: Iterable[Endpoint]
) -> endpoint_pb2.ClusterLoadAssignment:
    """The EDS resource for one cluster; an empty one is sent on purpose, see below.

    EDS is not a state-of-the-world type in Envoy's eyes: a cluster left out of a response keeps
    its old hosts. A cluster whose last replica went away must therefore be sent with no
    endpoints, or Envoy would keep routing to the departed replica.
    """
    lb_endpoints = [
        endpoint_components_pb2.LbEndpoint(
            endpoint=endpoint_components_pb2.Endpoint(
                address=address_pb2.Address(
                    socket_address=address_pb2.SocketAddress(
                        address=ep.host, port_value=ep.port, protocol=address_pb2.SocketAddress.TCP
                    )
                ),
                hostname=ep.instance_id,
            ),
            # Consul's passing filter already chose these; Envoy's own outlier detection still
            # ejects a replica that fails between two health checks.
            health_status=health_check_pb2.HEALTHY,
        )
        for ep in endpoints
    ]
    localities = [endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=lb_endpoints)]
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=cluster, endpoints=localities if lb_endpoints else []
    )


class EndpointSnapshots:
    """Holds the current snapshot and tells listeners when it changes.

    Listeners are plain callables run synchronously on every change (each ADS stream registers
    one that wakes it), so a change reaches every stream from the same event loop turn.
    """

    def __init__(self, clusters: Iterable[str] = ()) -> None:
        self._known = tuple(clusters)
        self._clusters: dict[str, tuple[Endpoint, ...]] = {}
        self._version = 0
        self._listeners: set[Callable[[], None]] = set()

    @property
    def version(self) -> int:
        return self._version

    @property
    def cluster_names(self) -> tuple[str, ...]:
        return self._known

    def snapshot(self) -> Snapshot:
        return Snapshot(version=self._version, clusters=dict(self._clusters))

    def set_endpoints(self, cluster: str, endpoints: Iterable[Endpoint]) -> bool:
        """Replaces one cluster's endpoints; returns whether anything changed.

        Order and duplicates do not matter: the same set of replicas in another order from
        Consul is the same snapshot.
        """
        new = tuple(sorted(set(endpoints)))
        if cluster in self._clusters and self._clusters[cluster] == new:
            return False
        self._clusters[cluster] = new
        if cluster not in self._known:
            self._known = (*self._known, cluster)
        self._version += 1
        logger.info(
            "snapshot changed cluster=%s version=%d endpoints=%d addresses=%s",
            cluster, self._version, len(new), ",".join(ep.address for ep in new) or "-",
        )
        self._notify()
        return True

    def add_listener(self, listener: Callable[[], None]) -> None:
        self._listeners.add(listener)

    def remove_listener(self, listener: Callable[[], None]) -> None:
        self._listeners.discard(listener)

    def _notify(self) -> None:
        for listener in list(self._listeners):
            listener()

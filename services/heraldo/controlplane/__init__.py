"""The control plane: Consul's healthy replicas, served to Envoy over ADS as EDS endpoints.

``EndpointSnapshots`` holds the versioned endpoints, ``AdsServicer`` serves them to Envoy and
``ConsulHealthWatcher`` keeps them current; the first two need no Consul, so tests drive them
directly.
"""

from heraldo.controlplane.ads import EDS_TYPE_URL, AdsServicer, StreamStatus
from heraldo.controlplane.snapshots import Endpoint, EndpointSnapshots, Snapshot, load_assignment
from heraldo.controlplane.watcher import ConsulHealthWatcher

__all__ = [
    "EDS_TYPE_URL",
    "AdsServicer",
    "ConsulHealthWatcher",
    "Endpoint",
    "EndpointSnapshots",
    "Snapshot",
    "StreamStatus",
    "load_assignment",
]

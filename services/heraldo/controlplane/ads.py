"""Envoy's Aggregated Discovery Service (state of the world), serving endpoints (EDS) only.

One bidirectional stream per Envoy. Envoy opens it with a DiscoveryRequest naming the clusters it
wants; we answer with a DiscoveryResponse carrying a version and a nonce; Envoy then ACKs (the
new version and our nonce) or NACKs (its previous version, our nonce and an ``error_detail``).
A request carrying an older nonce is stale (Envoy had not yet seen our newest response) and is
ignored. A NACKed version is never resent: the stream waits for the next real change, while
Envoy keeps serving the version it last accepted.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2
from prometheus_client import Counter, Gauge

from heraldo.controlplane.snapshots import Endpoint, EndpointSnapshots, load_assignment

logger = logging.getLogger(__name__)

EDS_TYPE_URL = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
SERVICE_FULL_NAME = "envoy.service.discovery.v3.AggregatedDiscoveryService"
CONTROL_PLANE_ID = "heraldo-controlplane"

XDS_STREAMS = Gauge("heraldo_xds_streams", "Envoy ADS streams connected")
XDS_RESPONSES = Counter("heraldo_xds_responses_total", "DiscoveryResponses sent", ["type_url"])
XDS_NACKS = Counter("heraldo_xds_nacks_total", "DiscoveryResponses Envoy rejected", ["type_url"])


@dataclass(frozen=True)
class StreamStatus:
    """What one Envoy stream was sent and what it accepted, as the control plane saw it."""

    stream_id: int
    node_id: str
    peer: str
    subscribed: tuple[str, ...] | None
    sent_version: str
    accepted_version: str
    rejected_version: str
    rejected_error: str


@dataclass(eq=False)
class _Stream:
    stream_id: int
    peer: str
    node_id: str = ""
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    requests: deque[discovery_pb2.DiscoveryRequest] = field(default_factory=deque)
    ended: bool = False
    #: None until Envoy's first EDS request; an empty set is a wildcard subscription.
    subscribed: frozenset[str] | None = None
    must_respond: bool = False
    nonces: itertools.count = field(default_factory=lambda: itertools.count(1))
    nonce: str = ""
    sent_version: str = ""
    sent: dict[str, tuple[Endpoint, ...]] | None = None
    accepted_version: str = ""
    rejected_version: str = ""
    rejected_error: str = ""
    ignored_types: set[str] = field(default_factory=set)

    def status(self) -> StreamStatus:
        subscribed = None if self.subscribed is None else tuple(sorted(self.subscribed))
        return StreamStatus(
            stream_id=self.stream_id, node_id=self.node_id, peer=self.peer,
            subscribed=subscribed, sent_version=self.sent_version,
            accepted_version=self.accepted_version, rejected_version=self.rejected_version,
            rejected_error=self.rejected_error,
        )


class AdsServicer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    """Serves ``EndpointSnapshots`` to every connected Envoy and pushes each change at once."""

    def __init__(self, *, snapshots: EndpointSnapshots, identifier: str = CONTROL_PLANE_ID) -> None:
        self._snapshots = snapshots
        self._identifier = identifier
        self._streams: dict[int, _Stream] = {}
        self._stream_ids = itertools.count(1)
        self._closing = False

    def streams(self) -> list[StreamStatus]:
        return [stream.status() for stream in self._streams.values()]

    def close(self) -> None:
        """Ends every stream with OK, so Envoy reconnects to whichever control plane is next."""
        self._closing = True
        for stream in self._streams.values():
            stream.wakeup.set()

    async def StreamAggregatedResources(  # noqa: N802 - the name the generated base class uses
        self, request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        stream = _Stream(stream_id=next(self._stream_ids), peer=context.peer())
        self._streams[stream.stream_id] = stream
        self._snapshots.add_listener(stream.wakeup.set)
        XDS_STREAMS.inc()
        reader = asyncio.create_task(self._read(request_iterator, stream))
        try:
            while not self._closing:
                await stream.wakeup.wait()
                stream.wakeup.clear()
                while stream.requests:
                    self._on_request(stream, stream.requests.popleft())
                if stream.ended or self._closing:
                    break
                response = self._next_response(stream)
                if response is not None:
                    yield response
        finally:
            reader.cancel()
            self._snapshots.remove_listener(stream.wakeup.set)
            del self._streams[stream.stream_id]
            XDS_STREAMS.dec()
            logger.info("envoy disconnected node=%s stream=%d accepted_version=%s",
                        stream.node_id or "-", stream.stream_id, stream.accepted_version or "-")

    @staticmethod
    async def _read(request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest],
                    stream: _Stream) -> None:
        try:
            async for request in request_iterator:
                stream.requests.append(request)
                stream.wakeup.set()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any read failure just ends this stream
            logger.debug("stream=%d read ended: %r", stream.stream_id, exc)
        finally:
            stream.ended = True
            stream.wakeup.set()

    def _on_request(self, stream: _Stream, request: discovery_pb2.DiscoveryRequest) -> None:
        if not stream.node_id and request.node.id:
            stream.node_id = request.node.id
            logger.info("envoy connected node=%s cluster=%s stream=%d peer=%s",
                        request.node.id, request.node.cluster or "-", stream.stream_id, stream.peer)
        if request.type_url != EDS_TYPE_URL:
            # Listeners, routes and clusters are static in our bootstraps; answering nothing makes
            # Envoy fall back on its initial fetch timeout instead of failing.
            if request.type_url not in stream.ignored_types:
                stream.ignored_types.add(request.type_url)
                logger.warning("ignoring unsupported type_url=%s node=%s",
                               request.type_url, stream.node_id or "-")
            return

        if request.response_nonce and request.response_nonce != stream.nonce:
            logger.debug("ignoring stale request node=%s nonce=%s latest_nonce=%s",
                         stream.node_id, request.response_nonce, stream.nonce)
            return
        if not request.response_nonce:
            # A first request: Envoy may carry the version it accepted from an earlier control
            # plane, but it has nothing from us yet and waits for an answer.
            stream.must_respond = True
            stream.accepted_version = request.version_info
        elif request.HasField("error_detail"):
            stream.rejected_version = stream.sent_version
            stream.rejected_error = request.error_detail.message
            stream.accepted_version = request.version_info
            XDS_NACKS.labels(EDS_TYPE_URL).inc()
            logger.warning("envoy rejected node=%s version=%s kept_version=%s code=%d error=%s",
                           stream.node_id or "-", stream.sent_version,
                           request.version_info or "-", request.error_detail.code,
                           request.error_detail.message)
        else:
            stream.accepted_version = request.version_info
            logger.debug("envoy accepted node=%s version=%s", stream.node_id, request.version_info)

        names = frozenset(request.resource_names)
        if names != stream.subscribed:
            stream.subscribed = names
            stream.must_respond = True
            logger.debug("subscription node=%s resources=%s",
                         stream.node_id, ",".join(sorted(names)) or "*")

    def _next_response(self, stream: _Stream) -> discovery_pb2.DiscoveryResponse | None:
        """The response this stream needs now, or None when Envoy already has the latest."""
        if stream.subscribed is None:
            return None
        snapshot = self._snapshots.snapshot()
        if snapshot.version == 0:
            # Nothing is known yet: an empty answer would wipe what Envoy may still hold from a
            # previous control plane. must_respond stays set for the first real snapshot.
            return None
        selected = snapshot.select(stream.subscribed)
        if not stream.must_respond and selected == stream.sent:
            return None

        stream.must_respond = False
        stream.sent = selected
        stream.sent_version = str(snapshot.version)
        stream.nonce = str(next(stream.nonces))
        resources = []
        for name, endpoints in sorted(selected.items()):
            packed = any_pb2.Any()
            packed.Pack(load_assignment(name, endpoints))
            resources.append(packed)
        XDS_RESPONSES.labels(EDS_TYPE_URL).inc()
        logger.debug("sending node=%s version=%s nonce=%s resources=%d",
                     stream.node_id, stream.sent_version, stream.nonce, len(resources))
        return discovery_pb2.DiscoveryResponse(
            version_info=stream.sent_version, type_url=EDS_TYPE_URL, nonce=stream.nonce,
            resources=resources,
            control_plane=base_pb2.ControlPlane(identifier=self._identifier),
        )

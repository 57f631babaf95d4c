"""The chunk writer: sends a chunk's notifications through Envoy's mesh listener to notifiers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import grpc

from heraldo.errors import Unavailable
from heraldo.v1 import notification_pb2, notification_pb2_grpc

logger = logging.getLogger(__name__)

TEMPORARY = notification_pb2.DELIVERY_STATUS_TEMPORARY_FAILURE
#: Notifications per gRPC message. gRPC and Envoy cost about as much per message as per byte of a
#: small one, so grouping cuts their share; a group small enough leaves the notifier something to
#: start on while the rest of the stream is still on its way.
REQUESTS_PER_MESSAGE = 50


class MeshUnavailable(Unavailable):
    """Some notifications got no result at all after every attempt: the mesh is not reachable."""


class MeshWriter:
    """Spreads each chunk over several concurrent ``DeliverBatches`` streams.

    Envoy balances streams, not messages: one stream sticks to the replica it was given, so a chunk
    sent as one long stream would all land on one notifier. Notifications with no result (a stream
    broke) or a temporary failure are sent again, with exponential backoff capped at
    ``retry_backoff_max_s``, up to ``max_attempts``; the notifiers deduplicate by notification id,
    so a resend never mails twice. The budget must outlast a notifier's stale-claim time: a
    replica killed mid-send leaves its claims "being delivered" until they go stale, and only
    then can another replica take them over.
    """

    def __init__(self, *, channel: grpc.aio.Channel, streams_per_chunk: int,
                 stream_timeout_s: float, max_attempts: int, retry_backoff_s: float,
                 retry_backoff_max_s: float = 8.0) -> None:
        self.stub = notification_pb2_grpc.NotifierServiceStub(channel)
        self.streams_per_chunk = streams_per_chunk
        self.stream_timeout_s = stream_timeout_s
        self.max_attempts = max_attempts
        self.retry_backoff_s = retry_backoff_s
        self.retry_backoff_max_s = retry_backoff_max_s

    async def deliver(self, requests: Sequence[notification_pb2.NotificationRequest]
                      ) -> dict[str, notification_pb2.DeliveryResult]:
        """Returns one result per request, keyed by notification id.

        Raises:
            MeshUnavailable: some requests got no result after every attempt.
        """
        pending = {request.notification_id: request for request in requests}
        results: dict[str, notification_pb2.DeliveryResult] = {}
        last_error = ""
        for attempt in range(1, self.max_attempts + 1):
            received, last_error = await self._deliver_once(list(pending.values()))
            for notification_id, result in received.items():
                if result.status == TEMPORARY and attempt < self.max_attempts:
                    continue
                results[notification_id] = result
                del pending[notification_id]
            if not pending:
                return results
            if attempt == self.max_attempts:
                break
            delay_s = min(self.retry_backoff_s * 2 ** (attempt - 1), self.retry_backoff_max_s)
            logger.warning("retrying pending=%d attempt=%d delay_s=%.1f last_error=%s",
                           len(pending), attempt, delay_s, last_error or "temporary failure")
            await asyncio.sleep(delay_s)
        raise MeshUnavailable(
            f"{len(pending)} notifications got no result from the notifiers after "
            f"{self.max_attempts} attempts: {last_error or 'no response'}")

    async def _deliver_once(self, requests: list[notification_pb2.NotificationRequest]
                            ) -> tuple[dict[str, notification_pb2.DeliveryResult], str]:
        streams = max(1, min(self.streams_per_chunk, len(requests)))
        groups = [requests[index::streams] for index in range(streams)]
        outcomes = await asyncio.gather(*(self._stream(group) for group in groups))
        received: dict[str, notification_pb2.DeliveryResult] = {}
        errors = []
        for results, error in outcomes:
            received.update(results)
            if error:
                errors.append(error)
        return received, "; ".join(sorted(set(errors)))

    async def _stream(self, group: list[notification_pb2.NotificationRequest]
                      ) -> tuple[dict[str, notification_pb2.DeliveryResult], str]:
        results: dict[str, notification_pb2.DeliveryResult] = {}
        wanted = {request.notification_id for request in group}
        messages = [notification_pb2.NotificationBatch(
            requests=group[start:start + REQUESTS_PER_MESSAGE])
            for start in range(0, len(group), REQUESTS_PER_MESSAGE)]
        try:
            call = self.stub.DeliverBatches(iter(messages), timeout=self.stream_timeout_s)
            async for answer in call:
                for result in answer.results:
                    if result.notification_id in wanted:
                        results[result.notification_id] = result
        except grpc.aio.AioRpcError as exc:
            return results, f"{exc.code().name}: {exc.details()}"
        return results, ""

"""``python -m heraldo.batch``: the batch service."""

from __future__ import annotations

import grpc

from heraldo import db, logs
from heraldo.batch.engine import PartitionWorker
from heraldo.batch.repository import JobRepository
from heraldo.batch.servicer import BatchServicer
from heraldo.batch.settings import BatchSettings
from heraldo.batch.writer import MeshWriter
from heraldo.registry import ConsulAddress
from heraldo.runtime import (
    Instance,
    RunningService,
    Servicer,
    load_settings,
    run_main,
    wait_for_shutdown_signal,
)
from heraldo.v1 import batch_pb2, batch_pb2_grpc, notification_pb2

SERVICE_NAME = "heraldo-batch"
DEFAULT_PORT = 50051


async def main() -> None:
    consul_address = ConsulAddress.from_env()
    settings = await load_settings(BatchSettings, "batch", consul_address)
    instance = Instance.from_env(SERVICE_NAME, DEFAULT_PORT)
    logs.configure(settings.log_level, service=instance.instance_id)

    engine = db.create_engine(db.database_url())
    await db.create_schema(engine)
    repository = JobRepository(engine)
    # One HTTP/2 connection to Envoy carries every stream; Envoy picks a replica per stream.
    channel = grpc.aio.insecure_channel(settings.mesh_address)
    writer = MeshWriter(channel=channel, streams_per_chunk=settings.streams_per_chunk,
                        stream_timeout_s=settings.stream_timeout_s,
                        max_attempts=settings.max_attempts,
                        retry_backoff_s=settings.retry_backoff_s,
                        retry_backoff_max_s=settings.retry_backoff_max_s)
    worker = PartitionWorker(
        repository=repository, writer=writer, replica_id=instance.instance_id,
        default_chunk_size=settings.chunk_size, heartbeat_interval_s=settings.heartbeat_interval_s,
        stale_after_s=settings.stale_after_s, poll_interval_s=settings.poll_interval_s,
        max_partitions=settings.max_partitions)
    servicer = BatchServicer(settings=settings, repository=repository, worker=worker,
                             owner=instance.instance_id)
    service = RunningService(
        instance=instance, consul_address=consul_address,
        servicers=[Servicer(servicer, batch_pb2_grpc.add_BatchServiceServicer_to_server,
                            batch_pb2.DESCRIPTOR.services_by_name["BatchService"].full_name)],
        check_interval_s=settings.check_interval_s,
        deregister_critical_after_s=settings.deregister_critical_after_s,
        # Envoy's edge sends reflection here; it serves NotifierService.Send too, so grpcurl
        # users see the whole public API.
        also_reflect=[notification_pb2.DESCRIPTOR.services_by_name["NotifierService"].full_name])
    await service.start()
    worker.start()
    try:
        await wait_for_shutdown_signal()
    finally:
        await servicer.shutdown(settings.shutdown_grace_s)
        await service.stop(settings.shutdown_grace_s)
        await channel.close()
        await engine.dispose()


if __name__ == "__main__":
    run_main(main, what="heraldo-batch")

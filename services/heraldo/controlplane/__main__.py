"""``python -m heraldo.controlplane``: serves Consul's healthy replicas to Envoy over ADS."""

from __future__ import annotations

import logging

from envoy.service.discovery.v3 import ads_pb2_grpc

from heraldo import logs
from heraldo.controlplane.ads import SERVICE_FULL_NAME, AdsServicer
from heraldo.controlplane.settings import ControlPlaneSettings
from heraldo.controlplane.snapshots import EndpointSnapshots
from heraldo.controlplane.watcher import ConsulHealthWatcher
from heraldo.registry import ConsulAddress
from heraldo.runtime import (
    Instance,
    RunningService,
    Servicer,
    load_settings,
    run_main,
    wait_for_shutdown_signal,
)

logger = logging.getLogger("heraldo.controlplane")

SERVICE_NAME = "heraldo-controlplane"
DEFAULT_PORT = 18000


async def main() -> None:
    consul_address = ConsulAddress.from_env()
    settings = await load_settings(ControlPlaneSettings, "controlplane", consul_address)
    instance = Instance.from_env(SERVICE_NAME, DEFAULT_PORT)
    logs.configure(settings.log_level, service=instance.instance_id)

    services = settings.services
    snapshots = EndpointSnapshots(services)
    ads = AdsServicer(snapshots=snapshots)
    service = RunningService(
        instance=instance, consul_address=consul_address,
        servicers=[Servicer(ads, ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server,
                            SERVICE_FULL_NAME)],
        check_interval_s=settings.check_interval_s,
        deregister_critical_after_s=settings.deregister_critical_after_s)
    consul_client = consul_address.client()
    watcher = ConsulHealthWatcher(
        client=consul_client, snapshots=snapshots, services=services,
        blocking_wait_s=settings.blocking_wait_s,
        retry_backoff_s=settings.consul_retry_backoff_s,
        retry_backoff_max_s=settings.consul_retry_backoff_max_s,
        recovery_grace_s=settings.recovery_grace_s)
    await service.start()
    watcher.start()
    logger.info("watching consul=%s clusters=%s", consul_address.url,
                ",".join(f"{cluster}={name}" for cluster, name in services.items()))
    try:
        await wait_for_shutdown_signal()
    finally:
        await watcher.stop()
        await consul_client.close()
        # ADS streams never end on their own; ending them first lets the server drain at once.
        ads.close()
        await service.stop(settings.shutdown_grace_s)


if __name__ == "__main__":
    run_main(main, what=SERVICE_NAME)

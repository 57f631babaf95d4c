"""The local agent: service and check registration, maintenance mode and the critical reaper."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from heraldo.consul_dev.checks import CheckRunner
from heraldo.consul_dev.durations import format_duration
from heraldo.consul_dev.errors import InvalidRequest, UnknownResource
from heraldo.consul_dev.payloads import CheckSpec
from heraldo.consul_dev.state import (
    CRITICAL,
    NODE_MAINTENANCE_CHECK_ID,
    SERVICE_MAINTENANCE_PREFIX,
    Check,
    ConsulState,
    Service,
)

logger = logging.getLogger(__name__)

#: How often the reaper looks for services whose check has been critical for too long. Consul
#: looks every 30 s and accepts no DeregisterCriticalServiceAfter below 1 minute; the stand-in
#: looks every second and honours any positive value, so tests can use a few seconds.
REAP_INTERVAL_S = 1.0
DEFAULT_SERVICE_MAINTENANCE_NOTE = (
    "Maintenance mode is enabled for this service, but no reason was provided. "
    "This is a default message."
)
DEFAULT_NODE_MAINTENANCE_NOTE = (
    "Maintenance mode is enabled for this node, but no reason was provided. "
    "This is a default message."
)


class LocalAgent:
    """What ``/v1/agent/...`` changes: the node's services and checks, kept by a CheckRunner."""

    def __init__(self, *, state: ConsulState, runner: CheckRunner) -> None:
        self._state = state
        self._runner = runner
        self._reaper: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._reaper = asyncio.create_task(self._reap_forever(), name="critical service reaper")

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper

    def register_service(
        self, service: Service, specs: list[CheckSpec], *, replace_existing_checks: bool
    ) -> None:
        """Add or update a service and its checks.

        Raises:
            InvalidRequest: a check ID belongs to the server, not to this agent.
        """
        for spec in specs:
            self._refuse_foreign_check(spec.check_id)

        self._state.put_service(service)
        wanted = {spec.check_id for spec in specs}
        for spec in specs:
            self._adopt(spec)
        if replace_existing_checks:
            for check in self._state.service_checks(service.service_id):
                maintenance = check.check_id.startswith(SERVICE_MAINTENANCE_PREFIX)
                if check.check_id not in wanted and not maintenance:
                    self.deregister_check(check.check_id)
        logger.info(
            "registered service %s id=%s address=%s port=%d checks=%d",
            service.name,
            service.service_id,
            service.address or "-",
            service.port,
            len(specs),
        )

    def deregister_service(self, service_id: str) -> None:
        """Remove a service and its checks.

        Raises:
            UnknownResource: no service has this ID.
        """
        checks = self._state.service_checks(service_id)
        service = self._state.remove_service(service_id)
        if service is None:
            raise UnknownResource(
                f'Unknown service ID "{service_id}". '
                "Ensure that the service ID is passed, not the service name."
            )
        for check in checks:
            self._runner.unwatch(check.check_id)
        logger.info("deregistered service %s id=%s", service.name, service_id)

    def register_check(self, spec: CheckSpec) -> None:
        """Add or update a check of the node or of one of its services.

        Raises:
            InvalidRequest: the named service does not exist, or the ID is the server's.
        """
        self._refuse_foreign_check(spec.check_id)
        if spec.service_id and not self._is_local_service(spec.service_id):
            raise InvalidRequest(f'ServiceID "{spec.service_id}" does not exist')
        self._adopt(spec)
        logger.info("registered check %s service_id=%s", spec.check_id, spec.service_id or "-")

    def deregister_check(self, check_id: str) -> None:
        """Remove a check.

        Raises:
            UnknownResource: no check has this ID.
        """
        if self._state.remove_check(check_id) is None:
            raise UnknownResource(
                f'Unknown check ID "{check_id}". '
                "Ensure that the check ID is passed, not the check name."
            )
        self._runner.unwatch(check_id)
        logger.info("deregistered check %s", check_id)

    def update_ttl(self, check_id: str, status: str, output: str) -> None:
        """Set a TTL check's status, as ``/v1/agent/check/pass|warn|fail|update`` do.

        Raises:
            ConsulDevError: the check does not exist or is not a TTL check.
        """
        self._runner.update_ttl(check_id, status, output)

    def service_maintenance(self, service_id: str, *, enable: bool, reason: str) -> None:
        """Put a service into maintenance mode (a critical check of its own) or take it out.

        Raises:
            UnknownResource: no service has this ID.
        """
        if not self._is_local_service(service_id):
            raise UnknownResource(
                f'Unknown service ID "{service_id}". '
                "Ensure that the service ID is passed, not the service name."
            )
        check_id = f"{SERVICE_MAINTENANCE_PREFIX}{service_id}"
        self._maintenance(
            check_id,
            name="Service Maintenance Mode",
            service_id=service_id,
            enable=enable,
            note=reason or DEFAULT_SERVICE_MAINTENANCE_NOTE,
        )

    def node_maintenance(self, *, enable: bool, reason: str) -> None:
        """Put the whole node into maintenance mode, or take it out."""
        self._maintenance(
            NODE_MAINTENANCE_CHECK_ID,
            name="Node Maintenance Mode",
            service_id="",
            enable=enable,
            note=reason or DEFAULT_NODE_MAINTENANCE_NOTE,
        )

    def _maintenance(
        self, check_id: str, *, name: str, service_id: str, enable: bool, note: str
    ) -> None:
        present = check_id in self._state.checks
        if enable and not present:
            check = Check(check_id=check_id, name=name, service_id=service_id, notes=note)
            self._state.put_check(check, keep_status=False)
            logger.info("maintenance mode on for %s", service_id or "the node")
        elif not enable and present:
            self._state.remove_check(check_id)
            logger.info("maintenance mode off for %s", service_id or "the node")

    def _adopt(self, spec: CheckSpec) -> None:
        check = Check(
            check_id=spec.check_id,
            name=spec.name,
            definition=spec.definition,
            service_id=spec.service_id,
            notes=spec.notes,
            status=spec.status or CRITICAL,
        )
        self._state.put_check(check, keep_status=spec.status is None)
        self._runner.watch(check)

    def _is_local_service(self, service_id: str) -> bool:
        service = self._state.services.get(service_id)
        return service is not None and service.agent_local

    def _refuse_foreign_check(self, check_id: str) -> None:
        existing = self._state.checks.get(check_id)
        if existing is not None and not existing.agent_local:
            raise InvalidRequest(f'Check ID "{check_id}" is reserved by the server')

    # ---- DeregisterCriticalServiceAfter

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(REAP_INTERVAL_S)
            self.reap(time.monotonic())

    def reap(self, now_s: float) -> None:
        """Deregister every service one of whose checks has been critical for too long."""
        doomed: dict[str, tuple[str, float]] = {}
        for check in self._state.checks.values():
            limit_s = check.definition.deregister_after_s
            since_s = check.critical_since_s
            if not (limit_s and check.service_id and check.status == CRITICAL):
                continue
            if since_s is not None and now_s - since_s >= limit_s:
                doomed.setdefault(check.service_id, (check.check_id, limit_s))

        for service_id, (check_id, limit_s) in doomed.items():
            if not self._is_local_service(service_id):
                continue
            logger.warning(
                "check %s critical for over %s, deregistering service id=%s",
                check_id,
                format_duration(limit_s),
                service_id,
            )
            self.deregister_service(service_id)

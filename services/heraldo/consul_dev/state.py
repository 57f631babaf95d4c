"""The stand-in's single-node catalog, health checks and KV store, with Consul's indexes.

Consul numbers every write with its Raft index and reports, for each read, the index of the last
write that could have changed that read's answer: a KV key's ModifyIndex, the last change to a
service's instances or their checks, and so on. Blocking queries wait for that number to move
past the one the client already has. This module keeps one global counter standing in for the
Raft index, the per-table and per-service indexes derived from it, and an event that wakes
every waiting query after each write so it can recompute its answer and index.

Everything here runs on the event loop's thread, and no method awaits while it changes state,
so a registration made of several writes is never seen half done.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from heraldo.consul_dev.durations import format_duration

logger = logging.getLogger(__name__)

PASSING = "passing"
WARNING = "warning"
CRITICAL = "critical"
STATUSES = (PASSING, WARNING, CRITICAL)

SERF_CHECK_ID = "serfHealth"
NODE_MAINTENANCE_CHECK_ID = "_node_maintenance"
SERVICE_MAINTENANCE_PREFIX = "_service_maintenance:"
#: The port Consul's server RPC listens on; the stand-in has none but reports it as Consul does.
SERVER_RPC_PORT = 8300
KV_FILE_NAME = "kv.json"


@dataclass(frozen=True)
class CheckDefinition:
    """What a check runs and how often; ``kind`` is "ttl", "http", "tcp", "grpc" or ""."""

    kind: str = ""
    target: str = ""
    interval_s: float = 0.0
    timeout_s: float = 0.0
    ttl_s: float = 0.0
    deregister_after_s: float = 0.0
    method: str = ""
    header: dict[str, list[str]] = field(default_factory=dict)
    body: str = ""
    grpc_use_tls: bool = False
    tls_skip_verify: bool = False
    tls_server_name: str = ""
    success_before_passing: int = 0
    failures_before_critical: int = 0
    failures_before_warning: int = 0

    def view(self) -> dict[str, Any]:
        """The ``Definition`` object of a health check, with Consul's omitted empty fields."""
        shown: dict[str, Any] = {}
        if self.kind == "http":
            shown.update(HTTP=self.target, Method=self.method or "GET", Header=self.header)
            if self.body:
                shown["Body"] = self.body
        elif self.kind == "tcp":
            shown["TCP"] = self.target
        elif self.kind == "grpc":
            shown.update(GRPC=self.target, GRPCUseTLS=self.grpc_use_tls)
        if self.kind in ("http", "grpc"):
            shown.update(TLSServerName=self.tls_server_name, TLSSkipVerify=self.tls_skip_verify)
        if self.interval_s:
            shown["Interval"] = format_duration(self.interval_s)
            shown["Timeout"] = format_duration(self.timeout_s)
        if self.ttl_s:
            shown["TTL"] = format_duration(self.ttl_s)
        if self.deregister_after_s:
            shown["DeregisterCriticalServiceAfter"] = format_duration(self.deregister_after_s)
        return shown


@dataclass
class Service:
    """One service instance on the node."""

    service_id: str
    name: str
    address: str = ""
    port: int = 0
    tags: list[str] = field(default_factory=list)
    meta: dict[str, str] = field(default_factory=dict)
    weights: dict[str, int] = field(default_factory=lambda: {"Passing": 1, "Warning": 1})
    enable_tag_override: bool = False
    kind: str = ""
    #: False for the "consul" service the server registers itself, which the agent endpoints
    #: do not list and cannot deregister.
    agent_local: bool = True
    create_index: int = 0
    modify_index: int = 0

    def same_definition(self, other: Service) -> bool:
        mine = (self.name, self.address, self.port, self.tags, self.meta, self.weights)
        theirs = (other.name, other.address, other.port, other.tags, other.meta, other.weights)
        return (mine, self.enable_tag_override, self.kind) == (
            theirs,
            other.enable_tag_override,
            other.kind,
        )

    def tagged_addresses(self) -> dict[str, dict[str, Any]]:
        try:
            version = ipaddress.ip_address(self.address).version
        except ValueError:
            return {}
        suffix = "ipv4" if version == 4 else "ipv6"
        return {
            f"{scope}_{suffix}": {"Address": self.address, "Port": self.port}
            for scope in ("lan", "wan")
        }

    def agent_view(self, datacenter: str) -> dict[str, Any]:
        """An entry of ``GET /v1/agent/services``."""
        view: dict[str, Any] = {"ID": self.service_id, "Service": self.name, "Tags": self.tags}
        view.update(Meta=self.meta, Port=self.port, Address=self.address)
        if tagged := self.tagged_addresses():
            view["TaggedAddresses"] = tagged
        view.update(
            Weights=self.weights, EnableTagOverride=self.enable_tag_override, Datacenter=datacenter
        )
        if self.kind:
            view["Kind"] = self.kind
        return view

    def health_view(self) -> dict[str, Any]:
        """The ``Service`` object of a ``GET /v1/health/service/:service`` entry."""
        view: dict[str, Any] = {"ID": self.service_id, "Service": self.name, "Tags": self.tags}
        if self.kind:
            view["Kind"] = self.kind
        view.update(Address=self.address, Meta=self.meta, Port=self.port)
        if tagged := self.tagged_addresses():
            view["TaggedAddresses"] = tagged
        view.update(
            Weights=self.weights,
            EnableTagOverride=self.enable_tag_override,
            Proxy={"Mode": "", "MeshGateway": {}, "Expose": {}},
            Connect={},
            PeerName="",
            CreateIndex=self.create_index,
            ModifyIndex=self.modify_index,
        )
        return view


@dataclass
class Check:
    """One health check, of the node (``service_id`` empty) or of a service instance."""

    check_id: str
    name: str
    definition: CheckDefinition = field(default_factory=CheckDefinition)
    service_id: str = ""
    notes: str = ""
    status: str = CRITICAL
    output: str = ""
    agent_local: bool = True
    create_index: int = 0
    modify_index: int = 0
    #: time.monotonic() when the check last turned critical, for DeregisterCriticalServiceAfter.
    critical_since_s: float | None = None

    def view(self, node: str, service: Service | None) -> dict[str, Any]:
        """A health check as the agent, health and catalog endpoints show it."""
        interval = self.definition.interval_s
        return {
            "Node": node,
            "CheckID": self.check_id,
            "Name": self.name,
            "Status": self.status,
            "Notes": self.notes,
            "Output": self.output,
            "ServiceID": self.service_id,
            "ServiceName": service.name if service else "",
            "ServiceTags": list(service.tags) if service else [],
            "Type": self.definition.kind,
            "Interval": format_duration(interval) if interval else "",
            "Timeout": format_duration(self.definition.timeout_s) if interval else "",
            "ExposedPort": 0,
            "Definition": self.definition.view(),
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }


@dataclass
class KVEntry:
    key: str
    value: bytes
    flags: int = 0
    create_index: int = 0
    modify_index: int = 0
    lock_index: int = 0

    def view(self) -> dict[str, Any]:
        return {
            "LockIndex": self.lock_index,
            "Key": self.key,
            "Flags": self.flags,
            # Consul stores an empty body as no value at all and shows it as null.
            "Value": base64.b64encode(self.value).decode("ascii") if self.value else None,
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }


class ConsulState:
    """The catalog of one node, its checks and the KV store, numbered like Consul's Raft log."""

    def __init__(
        self,
        *,
        node_name: str,
        address: str,
        datacenter: str = "dc1",
        data_dir: Path | None = None,
    ) -> None:
        self.node_name = node_name
        self.address = address
        self.datacenter = datacenter
        self.node_id = str(uuid.uuid4())
        self.data_dir = data_dir
        self.index = 0
        self.closing = False

        self.services: dict[str, Service] = {}
        self.checks: dict[str, Check] = {}
        self.kv: dict[str, KVEntry] = {}
        #: Deleted keys and the index of their deletion, so a prefix read's index still moves
        #: when the last key under it goes away.
        self.tombstones: dict[str, int] = {}
        self.service_index: dict[str, int] = {}
        self.node_index = 0
        self.services_table_index = 0
        self.checks_table_index = 0
        self.kvs_table_index = 0
        self._changed = asyncio.Event()

        if data_dir is not None:
            self._load_kv(data_dir / KV_FILE_NAME)
        self._bootstrap_node()

    # ---- indexes and change notification

    def _write(
        self, *, services: tuple[str, ...] = (), catalog: bool = False, checks: bool = False
    ) -> int:
        """Number one write, record which indexes it moves, and wake blocking queries."""
        self.index += 1
        for name in services:
            self.service_index[name] = self.index
        if catalog:
            self.services_table_index = self.index
        if checks:
            self.checks_table_index = self.index
        self.notify()
        return self.index

    def notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait_for_change(self, timeout_s: float) -> None:
        """Return after the next write, or after timeout_s, whichever comes first."""
        changed = self._changed
        try:
            await asyncio.wait_for(changed.wait(), timeout_s)
        except TimeoutError:
            pass

    def _bootstrap_node(self) -> None:
        # A Consul server registers its own node, the node's serf health check and the
        # "consul" service in the catalog when it starts.
        index = self._write(services=("consul",), catalog=True, checks=True)
        self.node_index = index
        self.services["consul"] = Service(
            service_id="consul",
            name="consul",
            port=SERVER_RPC_PORT,
            weights={"Passing": 1, "Warning": 1},
            agent_local=False,
            create_index=index,
            modify_index=index,
        )
        self.checks[SERF_CHECK_ID] = Check(
            check_id=SERF_CHECK_ID,
            name="Serf Health Status",
            status=PASSING,
            output="Agent alive and reachable",
            agent_local=False,
            create_index=index,
            modify_index=index,
        )

    def _service_names_of(self, check: Check) -> tuple[str, ...]:
        if not check.service_id:
            # A node check is part of the health of every service on the node.
            return tuple({service.name for service in self.services.values()})
        service = self.services.get(check.service_id)
        return (service.name,) if service else ()

    # ---- services and checks

    def put_service(self, service: Service) -> None:
        existing = self.services.get(service.service_id)
        if existing is not None and existing.same_definition(service):
            return
        names = (service.name,) if existing is None else (service.name, existing.name)
        index = self._write(services=names, catalog=True)
        service.create_index = existing.create_index if existing else index
        service.modify_index = index
        self.services[service.service_id] = service

    def remove_service(self, service_id: str) -> Service | None:
        service = self.services.get(service_id)
        if service is None or not service.agent_local:
            return None
        del self.services[service_id]
        for check_id in [c.check_id for c in self.checks.values() if c.service_id == service_id]:
            del self.checks[check_id]
        self._write(services=(service.name,), catalog=True, checks=True)
        return service

    def put_check(self, check: Check, *, keep_status: bool) -> Check:
        """Add or replace a check; with keep_status an existing check keeps its status.

        Consul keeps the status of a check that is registered again so that re-registering a
        healthy service does not flap it to critical until its next probe.
        """
        existing = self.checks.get(check.check_id)
        if existing is not None and keep_status:
            check.status, check.output = existing.status, existing.output
            check.critical_since_s = existing.critical_since_s
        elif check.status == CRITICAL:
            check.critical_since_s = time.monotonic()
        self.checks[check.check_id] = check
        index = self._write(services=self._service_names_of(check), checks=True)
        check.create_index = existing.create_index if existing else index
        check.modify_index = index
        return check

    def remove_check(self, check_id: str) -> Check | None:
        check = self.checks.get(check_id)
        if check is None or not check.agent_local:
            return None
        names = self._service_names_of(check)
        del self.checks[check_id]
        self._write(services=names, checks=True)
        return check

    def set_check_status(self, check_id: str, status: str, output: str) -> bool:
        """Record a check result; return True when the status changed.

        Only a change of status is a write: Consul syncs output-only changes to the catalog at
        most every few minutes, and a check whose output carries a timestamp would otherwise
        wake every blocking health query on each probe.
        """
        check = self.checks.get(check_id)
        if check is None:
            return False
        check.output = output
        if status == check.status:
            return False

        previous, check.status = check.status, status
        check.critical_since_s = time.monotonic() if status == CRITICAL else None
        check.modify_index = self._write(services=self._service_names_of(check), checks=True)
        logger.info(
            "check %s is now %s (was %s) service_id=%s",
            check_id,
            status,
            previous,
            check.service_id or "-",
        )
        return True

    def service_checks(self, service_id: str) -> list[Check]:
        return [check for check in self.checks.values() if check.service_id == service_id]

    # ---- reads: each returns (index, answer)

    def node_view(self) -> dict[str, Any]:
        return {
            "ID": self.node_id,
            "Node": self.node_name,
            "Address": self.address,
            "Datacenter": self.datacenter,
            "TaggedAddresses": {
                "lan": self.address,
                "lan_ipv4": self.address,
                "wan": self.address,
                "wan_ipv4": self.address,
            },
            "Meta": {"consul-network-segment": ""},
            "CreateIndex": self.node_index,
            "ModifyIndex": self.node_index,
        }

    def check_view(self, check: Check) -> dict[str, Any]:
        return check.view(self.node_name, self.services.get(check.service_id))

    def index_for_service(self, name: str) -> int:
        if name in self.service_index:
            return self.service_index[name]
        return max(self.services_table_index, self.node_index)

    def node_matches(self, node_meta: list[tuple[str, str]]) -> bool:
        meta = self.node_view()["Meta"]
        return all(meta.get(key) == value for key, value in node_meta)

    def instances(self, name: str, tags: list[str]) -> list[Service]:
        found = [
            service
            for service in self.services.values()
            if service.name == name and all(tag in service.tags for tag in tags)
        ]
        return sorted(found, key=lambda service: service.service_id)

    def health_service(
        self, name: str, *, tags: list[str], passing_only: bool, node_meta: list[tuple[str, str]]
    ) -> tuple[int, list[dict[str, Any]]]:
        entries = []
        node_checks = [check for check in self.checks.values() if not check.service_id]
        for service in self.instances(name, tags) if self.node_matches(node_meta) else []:
            checks = node_checks + self.service_checks(service.service_id)
            if passing_only and any(check.status != PASSING for check in checks):
                continue
            entries.append(
                {
                    "Node": self.node_view(),
                    "Service": service.health_view(),
                    "Checks": [self.check_view(check) for check in checks],
                }
            )
        return self.index_for_service(name), entries

    def health_checks(self, name: str) -> tuple[int, list[dict[str, Any]]]:
        views = [
            self.check_view(check)
            for service in self.instances(name, [])
            for check in self.service_checks(service.service_id)
        ]
        return self.index_for_service(name), views

    def health_state(self, state: str) -> tuple[int, list[dict[str, Any]]]:
        views = [
            self.check_view(check)
            for check in self.checks.values()
            if state == "any" or check.status == state
        ]
        return max(self.checks_table_index, 1), views

    def health_node(self, node: str) -> tuple[int, list[dict[str, Any]]]:
        if node not in (self.node_name, self.node_id):
            return max(self.checks_table_index, 1), []
        return self.checks_table_index, [self.check_view(c) for c in self.checks.values()]

    def catalog_services(self) -> tuple[int, dict[str, list[str]]]:
        names: dict[str, list[str]] = {}
        for service in self.services.values():
            tags = names.setdefault(service.name, [])
            tags.extend(tag for tag in service.tags if tag not in tags)
        return self.services_table_index, dict(sorted(names.items()))

    def catalog_service(self, name: str, tags: list[str]) -> tuple[int, list[dict[str, Any]]]:
        node = self.node_view()
        entries = []
        for service in self.instances(name, tags):
            entries.append(
                {
                    "ID": node["ID"],
                    "Node": node["Node"],
                    "Address": node["Address"],
                    "Datacenter": node["Datacenter"],
                    "TaggedAddresses": node["TaggedAddresses"],
                    "NodeMeta": node["Meta"],
                    "ServiceKind": service.kind,
                    "ServiceID": service.service_id,
                    "ServiceName": service.name,
                    "ServiceTags": service.tags,
                    "ServiceAddress": service.address,
                    "ServiceTaggedAddresses": service.tagged_addresses(),
                    "ServiceWeights": service.weights,
                    "ServiceMeta": service.meta,
                    "ServicePort": service.port,
                    "ServiceSocketPath": "",
                    "ServiceEnableTagOverride": service.enable_tag_override,
                    "ServiceProxy": {"Mode": "", "MeshGateway": {}, "Expose": {}},
                    "ServiceConnect": {},
                    "CreateIndex": service.create_index,
                    "ModifyIndex": service.modify_index,
                }
            )
        return self.index_for_service(name), entries

    def catalog_nodes(self) -> tuple[int, list[dict[str, Any]]]:
        return self.node_index, [self.node_view()]

    def catalog_node(self, node: str) -> tuple[int, dict[str, Any] | None]:
        index = max(self.node_index, self.services_table_index)
        if node not in (self.node_name, self.node_id):
            return index, None
        services = {
            service.service_id: {**service.health_view(), "Datacenter": self.datacenter}
            for service in self.services.values()
        }
        return index, {"Node": self.node_view(), "Services": services}

    # ---- KV

    def kv_get(self, key: str) -> tuple[int, KVEntry | None]:
        entry = self.kv.get(key)
        if entry is None:
            return self.kvs_table_index, None
        return entry.modify_index, entry

    def kv_list(self, prefix: str) -> tuple[int, list[KVEntry]]:
        entries = [self.kv[key] for key in sorted(self.kv) if key.startswith(prefix)]
        if not prefix:
            return self.kvs_table_index, entries
        highest = max((entry.modify_index for entry in entries), default=0)
        buried = (index for key, index in self.tombstones.items() if key.startswith(prefix))
        highest = max(highest, max(buried, default=0))
        return highest or self.kvs_table_index, entries

    def kv_keys(self, prefix: str, separator: str) -> tuple[int, list[str]]:
        index, entries = self.kv_list(prefix)
        keys: list[str] = []
        for entry in entries:
            key = entry.key
            if separator:
                cut = key.find(separator, len(prefix))
                if cut != -1:
                    key = key[: cut + len(separator)]
            if not keys or keys[-1] != key:
                keys.append(key)
        return index, keys

    def kv_put(self, key: str, value: bytes, *, flags: int, cas: int | None) -> bool:
        existing = self.kv.get(key)
        if cas is not None:
            # cas=0 creates the key only if it does not exist; any other value updates it only
            # if the key's ModifyIndex still equals it.
            current = existing.modify_index if existing else 0
            if current != cas:
                return False
        self.index += 1
        self.kvs_table_index = self.index
        self.kv[key] = KVEntry(
            key=key,
            value=value,
            flags=flags,
            create_index=existing.create_index if existing else self.index,
            modify_index=self.index,
        )
        self.tombstones.pop(key, None)
        self._kv_changed()
        return True

    def kv_delete(self, key: str, *, cas: int | None) -> bool:
        existing = self.kv.get(key)
        if existing is None:
            return True
        if cas is not None and existing.modify_index != cas:
            return False
        self._bury([key])
        return True

    def kv_delete_tree(self, prefix: str) -> bool:
        doomed = [key for key in self.kv if key.startswith(prefix)]
        if doomed:
            self._bury(doomed)
        return True

    def _bury(self, keys: list[str]) -> None:
        self.index += 1
        self.kvs_table_index = self.index
        for key in keys:
            del self.kv[key]
            self.tombstones[key] = self.index
        self._kv_changed()

    def _kv_changed(self) -> None:
        self.notify()
        if self.data_dir is not None:
            self._save_kv(self.data_dir / KV_FILE_NAME)

    def _save_kv(self, path: Path) -> None:
        document = {
            "Index": self.index,
            "Entries": [entry.view() for entry in self.kv.values()],
        }
        partial = path.with_suffix(".tmp")
        partial.write_text(json.dumps(document, indent=1), encoding="utf-8")
        # Rename over the old file so a crash mid-write never leaves half a KV store.
        os.replace(partial, path)

    def _load_kv(self, path: Path) -> None:
        if not path.exists():
            return
        document = json.loads(path.read_text(encoding="utf-8"))
        for view in document.get("Entries", []):
            self.kv[view["Key"]] = KVEntry(
                key=view["Key"],
                value=base64.b64decode(view["Value"]) if view.get("Value") else b"",
                flags=int(view.get("Flags", 0)),
                create_index=int(view["CreateIndex"]),
                modify_index=int(view["ModifyIndex"]),
            )
        # Carry the index on, so CAS indexes a client read before the restart stay meaningful
        # and no blocking query sees the index go backwards.
        self.index = int(document.get("Index", 0))
        self.kvs_table_index = max((e.modify_index for e in self.kv.values()), default=0)
        logger.info("loaded %d KV entries from %s index=%d", len(self.kv), path, self.index)

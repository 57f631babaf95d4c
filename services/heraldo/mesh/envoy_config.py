"""Renders Envoy's bootstrap for local runs from ``envoy/envoy.yaml.in``.

The template is plain YAML with ``string.Template`` placeholders; ``envoy/compose.yaml`` is the
same configuration written out for Docker Compose, which cannot render one.
"""

from __future__ import annotations

import logging
import string
from pathlib import Path

logger = logging.getLogger(__name__)

#: The template next to the compose bootstrap; ``render_bootstrap(template_path=...)`` overrides.
TEMPLATE_PATH = Path(__file__).resolve().parents[3] / "envoy" / "envoy.yaml.in"
DESCRIPTOR_PATH = Path(__file__).resolve().parents[3] / "envoy" / "heraldo.pb"

#: What ``envoy/compose.yaml`` is rendered with: services reach each other by compose service
#: name, and the descriptor set is mounted at /etc/envoy.
COMPOSE_PARAMETERS = {
    "edge_port": 8080, "mesh_port": 9090, "admin_port": 9901, "xds_host": "controlplane",
    "xds_port": 18000, "batch_address": None, "descriptor_path": "/etc/envoy/heraldo.pb",
    "node_id": "edge-1", "listen_host": "0.0.0.0",
}
#: The first lines of a rendered bootstrap that are the template's own header comment.
COMPOSE_HEADER = (
    "# Envoy bootstrap for Docker Compose: envoy/envoy.yaml.in rendered with\n"
    "# heraldo.mesh.envoy_config.COMPOSE_PARAMETERS (compose cannot render a template).\n"
    "# tests/controlplane/test_envoy_config.py fails when the two drift apart.\n"
)


def without_header(rendered: str) -> str:
    """The bootstrap below its leading comment lines."""
    lines = rendered.splitlines(keepends=True)
    while lines and lines[0].startswith("#"):
        lines.pop(0)
    return "".join(lines)


#: The ``batch`` cluster's discovery lines; continuation lines carry the cluster's indentation.
BATCH_EDS = (
    "type: EDS\n"
    "    eds_cluster_config:\n"
    "      eds_config: {ads: {}, resource_api_version: V3, initial_fetch_timeout: 2s}"
)
BATCH_FIXED = (
    "type: STRICT_DNS\n"
    "    dns_lookup_family: V4_ONLY\n"
    "    load_assignment:\n"
    "      cluster_name: batch\n"
    "      endpoints:\n"
    "      - lb_endpoints:\n"
    "        - endpoint: {address: {socket_address: {address: $host, port_value: $port}}}"
)


def _host_port(address: str, what: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"{what} must be host:port, got {address!r}")
    return host, int(port)


def _port(value: int, what: str) -> int:
    if not 0 < int(value) < 65536:
        raise ValueError(f"{what} must be a TCP port, got {value!r}")
    return int(value)


def render_bootstrap(*, edge_port: int = 8080, mesh_port: int = 9090, admin_port: int = 9901,
                     xds_host: str = "127.0.0.1", xds_port: int = 18000,
                     batch_address: str | None = None,
                     descriptor_path: str | Path = DESCRIPTOR_PATH, node_id: str = "edge-1",
                     listen_host: str = "127.0.0.1", template_path: Path = TEMPLATE_PATH) -> str:
    """Returns the bootstrap YAML for one Envoy.

    ``batch_address`` (``host:port``) pins the ``batch`` cluster to one address, so the edge
    reaches the batch service even before the control plane answers; without it ``batch`` is
    discovered over ADS like the notifiers. ``listen_host`` is where the edge and mesh listeners
    bind (``0.0.0.0`` in a container); the admin interface always stays on loopback.

    Raises:
        ValueError: a port or an address is malformed.
    """
    if batch_address:
        host, port = _host_port(batch_address, "batch_address")
        batch_discovery = string.Template(BATCH_FIXED).substitute(host=host, port=port)
    else:
        batch_discovery = BATCH_EDS
    if not node_id or any(c.isspace() for c in node_id):
        raise ValueError(f"node_id must be a non-empty word, got {node_id!r}")

    template = string.Template(template_path.read_text(encoding="utf-8"))
    rendered = template.substitute(
        node_id=node_id,
        listen_host=listen_host,
        admin_port=_port(admin_port, "admin_port"),
        edge_port=_port(edge_port, "edge_port"),
        mesh_port=_port(mesh_port, "mesh_port"),
        xds_host=xds_host,
        xds_port=_port(xds_port, "xds_port"),
        descriptor_path=str(Path(descriptor_path).resolve()),
        batch_discovery=batch_discovery,
    )
    logger.debug("rendered envoy bootstrap node=%s edge_port=%d mesh_port=%d admin_port=%d",
                 node_id, edge_port, mesh_port, admin_port)
    return rendered

"""Renders Envoy's bootstrap for local runs from ``envoy/envoy.yaml.in``.

The template is plain YAML with ``string.Template`` placeholders; ``envoy/compose.yaml`` is the
same configuration written out for Docker Compose, which cannot render one.
"""

from __future__ import annotations

import logging
import string
from pathlib import Path

from heraldo.mesh.credentials import AUDIENCE, ISSUER, JWKS_FILE

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
    "jwks_path": f"/etc/envoy/secrets/{JWKS_FILE}",
    "console_address": "console:8090",
}
#: The edge's local rate limit: requests per second, and the burst a quiet client may spend.
EDGE_RATE_PER_S = 100
EDGE_BURST = 200

#: HTTP status of an Envoy reply to the gRPC code its JSON body carries, as convert_grpc_status
#: would have written it (google.rpc.Status). Anything else becomes UNKNOWN (2).
LOCAL_REPLY_GRPC_CODES = {
    400: 3, 401: 16, 403: 7, 404: 5, 405: 12, 408: 4, 413: 3, 415: 3, 429: 8, 431: 3,
    500: 13, 502: 14, 503: 14, 504: 4,
}
#: Set by the edge's Lua filter on a request that arrived as REST (its content type is gone by
#: the time the transcoder has turned it into gRPC).
_NOT_GRPC = "header_filter: {header: {name: x-heraldo-rest, present_match: true}}"
_STATUS_IS = ("status_code_filter: {comparison: {op: EQ, "
              "value: {default_value: $status, runtime_key: local_reply_$status}}}")


def local_reply_mappers(indent: str = " " * 12) -> str:
    """The edge's ``local_reply_config.mappers``: a JSON body for every reply to a REST client.

    One mapper per status, since each carries its own gRPC code; the last catches the rest.
    """
    body = 'json_format: {code: $code, message: "%LOCAL_REPLY_BODY%"}'
    blocks = []
    for status, code in LOCAL_REPLY_GRPC_CODES.items():
        blocks.append(string.Template(
            "- filter:\n"
            "    and_filter:\n"
            f"      filters:\n      - {_STATUS_IS}\n      - {_NOT_GRPC}\n"
            f"  body_format_override: {{{body}}}"
        ).substitute(status=status, code=code))
    blocks.append(f"- filter: {{{_NOT_GRPC}}}\n"
                  f"  body_format_override: {{{string.Template(body).substitute(code=2)}}}")
    lines = "\n".join(blocks).splitlines()
    return "\n".join(indent + line for line in lines)
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
                     listen_host: str = "127.0.0.1", jwks_path: str | Path = JWKS_FILE,
                     edge_rate_per_s: int = EDGE_RATE_PER_S, edge_burst: int = EDGE_BURST,
                     console_address: str = "127.0.0.1:8090",
                     template_path: Path = TEMPLATE_PATH) -> str:
    """Returns the bootstrap YAML for one Envoy.

    ``batch_address`` (``host:port``) pins the ``batch`` cluster to one address, so the edge
    reaches the batch service even before the control plane answers; without it ``batch`` is
    discovered over ADS like the notifiers. ``listen_host`` is where the edge and mesh listeners
    bind (``0.0.0.0`` in a container); the admin interface always stays on loopback.
    ``jwks_path`` is the key set the edge verifies bearer tokens with (see
    ``heraldo.mesh.credentials``); ``edge_rate_per_s`` and ``edge_burst`` size its rate limit.
    ``console_address`` (``host:port``) is the job console the edge serves at ``/console/``.

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
    if edge_rate_per_s < 1 or edge_burst < edge_rate_per_s:
        raise ValueError(f"the edge rate limit needs 1 <= edge_rate_per_s <= edge_burst, got "
                         f"{edge_rate_per_s} per second with a burst of {edge_burst}")

    console_host, console_port = _host_port(console_address, "console_address")

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
        jwks_path=str(Path(jwks_path).resolve()),
        jwt_issuer=ISSUER,
        jwt_audience=AUDIENCE,
        edge_rate_per_s=int(edge_rate_per_s),
        edge_burst=int(edge_burst),
        local_reply_mappers=local_reply_mappers(),
        console_host=console_host,
        console_port=_port(console_port, "console_port"),
    )
    logger.debug("rendered envoy bootstrap node=%s edge_port=%d mesh_port=%d admin_port=%d",
                 node_id, edge_port, mesh_port, admin_port)
    return rendered

"""A small read-only HTML page showing the stand-in's services, checks and KV tree."""

from __future__ import annotations

from html import escape

from heraldo.consul_dev.state import ConsulState

#: Longest KV value shown in full; longer values are cut, since the page is for a quick look.
VALUE_PREVIEW_CHARS = 200
REFRESH_S = 2

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin-bottom: 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
.passing { color: #17703a; } .warning { color: #a86800; } .critical { color: #b3261e; }
pre { margin: 0; white-space: pre-wrap; max-width: 60em; }
"""


def render_page(state: ConsulState) -> str:
    """The whole page, every value from the catalog or KV escaped."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<meta http-equiv='refresh' content='{REFRESH_S}'>",
        "<title>Consul development stand-in</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>Consul development stand-in</h1>",
        f"<p>node {escape(state.node_name)}, datacenter {escape(state.datacenter)}, "
        f"index {state.index}. A development tool, not Consul.</p>",
        _services_table(state),
        _checks_table(state),
        _kv_table(state),
        "</body></html>",
    ]
    return "\n".join(parts)


def _services_table(state: ConsulState) -> str:
    rows = []
    for service in sorted(state.services.values(), key=lambda s: (s.name, s.service_id)):
        rows.append(
            "<tr>"
            f"<td>{escape(service.name)}</td><td>{escape(service.service_id)}</td>"
            f"<td>{escape(service.address or state.address)}:{service.port}</td>"
            f"<td>{escape(', '.join(service.tags))}</td>"
            "</tr>"
        )
    header = "<tr><th>service</th><th>instance</th><th>address</th><th>tags</th></tr>"
    return f"<h2>Services</h2><table>{header}{''.join(rows)}</table>"


def _checks_table(state: ConsulState) -> str:
    rows = []
    for check in sorted(state.checks.values(), key=lambda c: (c.service_id, c.check_id)):
        rows.append(
            "<tr>"
            f"<td>{escape(check.service_id or '(node)')}</td><td>{escape(check.check_id)}</td>"
            f"<td>{escape(check.definition.kind or '-')}</td>"
            f"<td class='{escape(check.status)}'>{escape(check.status)}</td>"
            f"<td><pre>{escape(check.output)}</pre></td>"
            "</tr>"
        )
    header = "<tr><th>instance</th><th>check</th><th>type</th><th>status</th><th>output</th></tr>"
    return f"<h2>Checks</h2><table>{header}{''.join(rows)}</table>"


def _kv_table(state: ConsulState) -> str:
    rows = []
    for key in sorted(state.kv):
        entry = state.kv[key]
        value = entry.value.decode("utf-8", errors="replace")
        if len(value) > VALUE_PREVIEW_CHARS:
            value = value[:VALUE_PREVIEW_CHARS] + " …"
        rows.append(
            "<tr>"
            f"<td>{escape(key)}</td><td><pre>{escape(value)}</pre></td>"
            f"<td>{entry.flags}</td><td>{entry.modify_index}</td>"
            "</tr>"
        )
    header = "<tr><th>key</th><th>value</th><th>flags</th><th>modify index</th></tr>"
    return f"<h2>Key/value</h2><table>{header}{''.join(rows)}</table>"

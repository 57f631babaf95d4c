"""Turn Consul request bodies into the stand-in's definitions, validating them as Consul does.

Consul decodes request bodies without regard to case and accepts snake_case spellings as well
(py-consul sends ``name``, ``checks``, ``grpc_use_tls``; the Go client sends ``Name``,
``Checks``, ``GRPCUseTLS``), so field names are compared after lower-casing them and dropping
underscores and dashes. User-supplied maps (``Meta``, ``Header``) keep their keys as sent.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from heraldo.consul_dev.durations import format_duration, parse_duration
from heraldo.consul_dev.errors import InvalidRequest
from heraldo.consul_dev.state import STATUSES, CheckDefinition, Service

logger = logging.getLogger(__name__)

#: Consul refuses to run interval checks more often than once a second.
MIN_INTERVAL_S = 1.0
#: What Consul waits for an HTTP, TCP or gRPC check when the definition names no Timeout.
DEFAULT_CHECK_TIMEOUT_S = 10.0

# Check kinds Consul supports that this stand-in does not run; registering one is refused
# rather than accepted and never evaluated, so nobody mistakes a silent check for a passing one.
_UNSUPPORTED_CHECK_FIELDS = {
    "dockercontainerid": "Docker",
    "aliasservice": "alias",
    "aliasnode": "alias",
    "h2ping": "H2PING",
    "udp": "UDP",
    "osservice": "OSService",
}


@dataclass(frozen=True)
class CheckSpec:
    """A check as a registration request describes it, before the agent adopts it."""

    check_id: str
    name: str
    definition: CheckDefinition
    service_id: str = ""
    notes: str = ""
    #: None when the request gave no Status: a new check then starts critical and an
    #: existing one keeps the status it has.
    status: str | None = None


def decode_object(body: bytes) -> dict[str, Any]:
    """Decode a JSON object request body.

    Raises:
        InvalidRequest: the body is empty, not JSON, or not an object.
    """
    if not body.strip():
        raise InvalidRequest("Request decode failed: EOF")
    try:
        decoded = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequest(f"Request decode failed: {exc}") from exc
    if not isinstance(decoded, dict):
        raise InvalidRequest("Request decode failed: the body must be a JSON object")
    return decoded


def fields(obj: Any, what: str) -> dict[str, Any]:
    """Index a decoded JSON object by normalised field name (``GRPCUseTLS`` -> ``grpcusetls``)."""
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise InvalidRequest(f"Request decode failed: {what} must be a JSON object")
    return {_normalise(key): value for key, value in obj.items()}


def _normalise(key: str) -> str:
    return key.lower().replace("_", "").replace("-", "")


def parse_service(body: dict[str, Any]) -> tuple[Service, list[CheckSpec]]:
    """Read a ``PUT /v1/agent/service/register`` body.

    Raises:
        InvalidRequest: the service or one of its checks is not valid.
    """
    service_fields = fields(body, "the service")
    name = _string(service_fields.get("name"), "Name")
    if not name:
        raise InvalidRequest("Missing service name")
    service = Service(
        service_id=_string(service_fields.get("id"), "ID") or name,
        name=name,
        address=_string(service_fields.get("address"), "Address"),
        port=_integer(service_fields.get("port"), "Port"),
        tags=_string_list(service_fields.get("tags"), "Tags"),
        meta=_string_map(service_fields.get("meta"), "Meta"),
        weights=_weights(service_fields.get("weights")),
        enable_tag_override=bool(service_fields.get("enabletagoverride") or False),
        kind=_string(service_fields.get("kind"), "Kind"),
    )

    raw_checks: list[Any] = []
    if service_fields.get("check"):
        raw_checks.append(service_fields["check"])
    listed = service_fields.get("checks") or []
    if not isinstance(listed, list):
        raise InvalidRequest("Request decode failed: Checks must be a JSON array")
    raw_checks.extend(check for check in listed if check)

    specs = []
    for position, raw_check in enumerate(raw_checks, start=1):
        default_id = f"service:{service.service_id}"
        if len(raw_checks) > 1:
            default_id = f"{default_id}:{position}"
        specs.append(
            parse_check(
                fields(raw_check, "a check"),
                default_id=default_id,
                default_name=f"Service '{service.name}' check",
                service_id=service.service_id,
            )
        )
    return service, specs


def parse_check_registration(body: dict[str, Any]) -> CheckSpec:
    """Read a ``PUT /v1/agent/check/register`` body.

    Raises:
        InvalidRequest: the check is not valid.
    """
    check_fields = fields(body, "the check")
    name = _string(check_fields.get("name"), "Name")
    if not name:
        raise InvalidRequest("Missing check name")
    return parse_check(
        check_fields,
        default_id=name,
        default_name=name,
        service_id=_string(check_fields.get("serviceid"), "ServiceID"),
    )


def parse_check(
    check_fields: dict[str, Any], *, default_id: str, default_name: str, service_id: str
) -> CheckSpec:
    """Read one check definition, already indexed by :func:`fields`.

    Raises:
        InvalidRequest: the check names no kind, an unsupported kind, or lacks its interval.
    """
    for field, kind in _UNSUPPORTED_CHECK_FIELDS.items():
        if check_fields.get(field):
            raise InvalidRequest(
                f"Invalid check: {kind} checks are not supported by the Consul development stand-in"
            )
    if check_fields.get("args") or check_fields.get("scriptargs") or check_fields.get("script"):
        raise InvalidRequest(
            "Scripts are disabled on this agent; to enable, configure 'enable_script_checks' "
            "or 'enable_local_script_checks' to true"
        )

    status = _string(check_fields.get("status"), "Status") or None
    if status is not None and status not in STATUSES:
        raise InvalidRequest(f'Invalid check status: "{status}"')

    definition = _definition(check_fields)
    return CheckSpec(
        check_id=_string(check_fields.get("checkid") or check_fields.get("id"), "CheckID")
        or default_id,
        name=_string(check_fields.get("name"), "Name") or default_name,
        definition=definition,
        service_id=service_id,
        notes=_string(check_fields.get("notes"), "Notes"),
        status=status,
    )


def _definition(check_fields: dict[str, Any]) -> CheckDefinition:
    ttl_s = parse_duration(check_fields.get("ttl"), "TTL")
    interval_s = parse_duration(check_fields.get("interval"), "Interval")
    timeout_s = parse_duration(check_fields.get("timeout"), "Timeout")
    deregister_after_s = parse_duration(
        check_fields.get("deregistercriticalserviceafter"), "DeregisterCriticalServiceAfter"
    )
    common = {
        "deregister_after_s": max(deregister_after_s, 0.0),
        "success_before_passing": _integer(
            check_fields.get("successbeforepassing"), "SuccessBeforePassing"
        ),
        "failures_before_critical": _integer(
            check_fields.get("failuresbeforecritical"), "FailuresBeforeCritical"
        ),
        "failures_before_warning": _integer(
            check_fields.get("failuresbeforewarning"), "FailuresBeforeWarning"
        ),
    }

    # Consul picks the kind in this order when a definition names more than one.
    if ttl_s > 0:
        return CheckDefinition(kind="ttl", ttl_s=ttl_s, **common)
    if check_fields.get("http"):
        kind, target = "http", _string(check_fields["http"], "HTTP")
    elif check_fields.get("tcp"):
        kind, target = "tcp", _string(check_fields["tcp"], "TCP")
    elif check_fields.get("grpc"):
        kind, target = "grpc", _string(check_fields["grpc"], "GRPC")
    else:
        raise InvalidRequest("Invalid check: TTL must be > 0 for TTL checks")

    if interval_s <= 0:
        raise InvalidRequest("Invalid check: Interval must be > 0 for HTTP, TCP or gRPC checks")
    if interval_s < MIN_INTERVAL_S:
        logger.warning(
            "check interval %s is below Consul's minimum, using %s",
            format_duration(interval_s),
            format_duration(MIN_INTERVAL_S),
        )
        interval_s = MIN_INTERVAL_S
    return CheckDefinition(
        kind=kind,
        target=target,
        interval_s=interval_s,
        timeout_s=timeout_s if timeout_s > 0 else DEFAULT_CHECK_TIMEOUT_S,
        method=_string(check_fields.get("method"), "Method").upper(),
        header=_header(check_fields.get("header")),
        body=_string(check_fields.get("body"), "Body"),
        grpc_use_tls=bool(check_fields.get("grpcusetls") or False),
        tls_skip_verify=bool(check_fields.get("tlsskipverify") or False),
        tls_server_name=_string(check_fields.get("tlsservername"), "TLSServerName"),
        **common,
    )


def parse_status_update(body: dict[str, Any]) -> tuple[str, str]:
    """Read a ``PUT /v1/agent/check/update/:check_id`` body into (status, output).

    Raises:
        InvalidRequest: the status is not passing, warning or critical.
    """
    update_fields = fields(body, "the update")
    status = _string(update_fields.get("status"), "Status")
    if status not in STATUSES:
        raise InvalidRequest(f'Invalid check status: "{status}"')
    return status, _string(update_fields.get("output"), "Output")


def _string(value: Any, field: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidRequest(f"Request decode failed: {field} must be a string")
    return value


def _integer(value: Any, field: str) -> int:
    if value is None or value == "":
        return 0
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest(f"Request decode failed: {field} must be a number")
    return int(value)


def _string_list(value: Any, field: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InvalidRequest(f"Request decode failed: {field} must be an array of strings")
    return list(value)


def _string_map(value: Any, field: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(item, str) for item in value.values()):
        raise InvalidRequest(f"Request decode failed: {field} must map strings to strings")
    return dict(value)


def _weights(value: Any) -> dict[str, int]:
    weight_fields = fields(value, "Weights")
    weights = {
        "Passing": _integer(weight_fields.get("passing"), "Weights.Passing") or 1,
        "Warning": _integer(weight_fields.get("warning"), "Weights.Warning") or 1,
    }
    if weights["Passing"] < 1:
        raise InvalidRequest("Passing must be greater than 0")
    return weights


def _header(value: Any) -> dict[str, list[str]]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest("Request decode failed: Header must map names to arrays of strings")
    header = {}
    for name, values in value.items():
        listed = values if isinstance(values, list) else [values]
        header[str(name)] = [str(item) for item in listed]
    return header

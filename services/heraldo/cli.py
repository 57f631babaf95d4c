"""``heraldo``: the command line for operators.

    heraldo jobs start NAME [--from DATE] [--to DATE] [--country C]... [--watch]
    heraldo jobs list | show ID | watch ID | stop ID | restart ID [--watch]
    heraldo send --to EMAIL --invoice NUMBER --amount 12.50 [--currency GBP] ...
    heraldo mesh status           services, replicas and their health, as Consul sees them
    heraldo config get [KEY]      settings in Consul KV (all of them, or one)
    heraldo config set KEY VALUE  validated against the service's settings before it is written
    heraldo import online-retail FILE | demo [--invoices N]
    heraldo setup                 seed Consul KV with the defaults and create the database schema
    heraldo probe HOST:PORT       exit 0 when the gRPC service there reports SERVING
    heraldo db upgrade            migrate the database (DATABASE_URL) to the newest schema

Jobs and ``send`` go through Envoy's edge (``--edge``, env ``HERALDO_EDGE_URL``, default
http://127.0.0.1:8080) with ``Authorization: Bearer <token>``, the token taken from
``HERALDO_TOKEN`` or ``HERALDO_API_KEY``, else from ``--credentials FILE`` (default
var/credentials.json, written by the local mesh, when it exists). ``mesh`` and ``config`` talk to
Consul (``--consul``, env ``CONSUL_HTTP_ADDR``, default 127.0.0.1:8500).

Exit status: 0 done; 1 a watched job ended other than COMPLETED or with failed notifications, or
a sent notification was not delivered; 2 an error, printed as one line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import datetime as dt
import decimal
import gzip
import json
import logging
import os
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_type_hints

import grpc
import jinja2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from heraldo import __version__, db
from heraldo.argparsing import OneLineParser, whole_number
from heraldo.batch.settings import MAX_PAGE_SIZE
from heraldo.errors import ConfigError, HeraldoError, InvalidArgument, NotFound, Unavailable
from heraldo.notifier.render import (
    OVERRIDE_PREFIX,
    IncompleteTemplates,
    InvalidTemplate,
    Renderer,
    overrides_from_kv,
)
from heraldo.registry import ConsulAddress, seed_kv
from heraldo.settings import KV_PREFIX, SHARED_SCOPE, convert, load_seed, resolve

logger = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 3.0
HTTP_TIMEOUT_S = 30.0
WATCH_POLL_S = 0.5
DEFAULT_EDGE_URL = "http://127.0.0.1:8080"
DEFAULT_CREDENTIALS = Path("var") / "credentials.json"
#: Written by the local mesh (make up / make run): its edge, Consul and database addresses.
LOCAL_MESH_FILE = Path("var") / "mesh.json"
TERMINAL = ("JOB_STATUS_COMPLETED", "JOB_STATUS_FAILED", "JOB_STATUS_STOPPED")
BAR_WIDTH = 30
EXIT_OK, EXIT_NOT_DONE, EXIT_ERROR = 0, 1, 2
#: Notifier settings used only while it starts; every other one is applied live.
NOTIFIER_START_ONLY = frozenset({"log_level", "check_interval_s", "deregister_critical_after_s"})


# --- talking to the edge ---------------------------------------------------------------------

class RequestFailed(HeraldoError):
    """The edge or Consul answered with an error status; the message is the server's own."""


def read_token(credentials: str | None) -> str:
    """The bearer token: ``HERALDO_TOKEN``, ``HERALDO_API_KEY``, then the credentials file.

    The file is the local mesh's ``credentials.json`` (``token`` or ``authorization``); a file
    holding nothing but the token also works. No token at all is fine while the edge asks none.

    Raises:
        ConfigError: a named credentials file cannot be read or holds no token.
    """
    for name in ("HERALDO_TOKEN", "HERALDO_API_KEY"):
        if os.environ.get(name, "").strip():
            # The credentials file's "authorization" value carries the scheme; accept it too.
            return _header_safe(os.environ[name].strip().removeprefix("Bearer ").strip(), name)
    path = Path(credentials) if credentials else DEFAULT_CREDENTIALS
    if not path.exists():
        if credentials:
            raise ConfigError(f"credentials file {path} does not exist")
        return ""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read credentials file {path}: {exc}") from exc
    if not text.startswith(("{", "[")):
        return _header_safe(text.removeprefix("Bearer ").strip(), f"credentials file {path}")
    try:
        payload = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"credentials file {path} is not JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise ConfigError(f"credentials file {path} is not a JSON object with a 'token'")
    token = payload.get("token") or payload.get("api_key") or payload.get("authorization") or ""
    if not isinstance(token, str):
        raise ConfigError(f"credentials file {path}: the token is not a string")
    token = token.removeprefix("Bearer ").strip()
    if not token:
        raise ConfigError(f"credentials file {path} holds no 'token' or 'authorization'")
    return _header_safe(token, f"credentials file {path}")


def _header_safe(token: str, source: str) -> str:
    """``token`` when it can go in an HTTP header as it is: printable ASCII, without blanks."""
    if not token.isascii() or not token.isprintable() or any(c.isspace() for c in token):
        raise ConfigError(f"{source}: the token holds blanks or characters other than "
                          "printable ASCII; a bearer token has none")
    return token


class HttpApi:
    """A small JSON-over-HTTP client for the edge and for Consul; errors become one line."""

    def __init__(self, base_url: str, *, token: str = "", what: str = "the edge",
                 token_from: str = "") -> None:
        """``token_from`` says where a token comes from, for a 401 or 403."""
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.what = what
        self.token_from = token_from or (
            f"HERALDO_TOKEN or --credentials FILE (make up writes {DEFAULT_CREDENTIALS})")

    def call(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
             allow_missing: bool = False) -> Any:
        """Sends one request and returns the decoded JSON reply (None for an empty body).

        Raises:
            Unavailable: the server cannot be reached.
            NotFound: 404 (or None returned when ``allow_missing``).
            RequestFailed: any other error status, with the server's message.
        """
        data = raw if raw is not None else (
            None if body is None else json.dumps(body).encode("utf-8"))
        request = urllib.request.Request(f"{self.base_url}{path}", data=data, method=method)
        if data is not None and raw is None:
            request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
                payload = response.read()
        except urllib.error.HTTPError as exc:
            message = error_message(exc.read())
            if exc.code == 404 and allow_missing:
                return None
            if exc.code == 404:
                raise NotFound(f"{method} {path}: not found ({message})") from exc
            if exc.code == 401 and not self.token:
                raise RequestFailed(
                    f"{self.what} at {self.base_url} asks for a token and none was found "
                    f"({message}); it comes from {self.token_from}") from exc
            if exc.code in (401, 403):
                raise RequestFailed(
                    f"{self.what} at {self.base_url} refused the credentials ({exc.code} "
                    f"{message}); check {self.token_from}") from exc
            raise RequestFailed(f"{method} {path} failed with {exc.code}: {message}") from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise Unavailable(f"cannot reach {self.what} at {self.base_url} ({reason}); "
                              f"is the mesh up (make up)?") from exc
        return json.loads(payload) if payload.strip() else None


def error_message(payload: bytes) -> str:
    """The readable part of an error body: a ``google.rpc.Status`` message, or the text."""
    text = payload.decode("utf-8", errors="replace").strip()
    try:
        decoded = json.loads(text)
    except ValueError:
        return text.splitlines()[0] if text else "no details"
    if isinstance(decoded, dict) and decoded.get("message"):
        return str(decoded["message"])
    return text


# --- jobs ------------------------------------------------------------------------------------

def _count(job: dict, name: str) -> int:
    # int64 fields arrive as JSON strings from the transcoder.
    return int(job.get("counts", {}).get(name, 0) or 0)


def _status(job: dict) -> str:
    return str(job.get("status", "")).removeprefix("JOB_STATUS_")


def format_duration(seconds: float) -> str:
    if seconds < 0:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def progress_bar(done: int, total: int, width: int = BAR_WIDTH) -> str:
    fraction = min(done / total, 1.0) if total > 0 else 1.0
    filled = int(fraction * width)
    return f"[{'#' * filled}{'.' * (width - filled)}] {100 * fraction:5.1f}%"


def job_progress_line(job: dict) -> str:
    """One line for ``jobs watch``: bar, counts, rate and time left."""
    selected, processed = _count(job, "selected"), _count(job, "processed")
    rate = float(job.get("ratePerSecond", 0) or 0)
    left = float(job.get("secondsLeft", -1))
    return (f"{progress_bar(processed, selected)} {processed}/{selected}"
            f"  sent {_count(job, 'sent')} skipped {_count(job, 'skipped')}"
            f" failed {_count(job, 'failed')}  {rate:.0f}/s"
            f"  left {'-' if job.get('status') in TERMINAL else format_duration(left)}"
            f"  {_status(job)}")


def job_details(job: dict) -> str:
    """``jobs show``: the job's state, counts, reasons and replicas, as a short report."""
    params = job.get("parameters", {}) or {}
    lines = [f"job {job.get('jobId')}  {job.get('jobName')}  {_status(job)}"]
    for label, key in (("created", "createTime"), ("started", "startTime"),
                       ("ended", "endTime")):
        if job.get(key):
            lines.append(f"  {label:8} {job[key]}")
    if any(params.get(key) for key in ("issuedFrom", "issuedTo", "countries", "template")):
        lines.append(f"  params   {json.dumps(params, separators=(', ', ': '))}")
    lines.append(f"  progress {job_progress_line(job)}")
    lines.append("  counts   " + "  ".join(
        f"{name} {_count(job, name)}"
        for name in ("selected", "processed", "sent", "skipped", "failed", "duplicate")))
    if job.get("exitMessage"):
        lines.append(f"  message  {job['exitMessage']}")
    reasons = job.get("reasons") or {}
    if reasons:
        lines.append("  not sent, by reason:")
        lines += [f"    {int(count):7d}  {reason}"
                  for reason, count in sorted(reasons.items(), key=lambda item: -int(item[1]))]
    notices = job.get("notices") or {}
    if notices:
        lines.append("  sent, with a notice:")
        lines += [f"    {int(count):7d}  {notice}" for notice, count in sorted(notices.items())]
    replicas = job.get("sentByReplica") or {}
    if replicas:
        sent = max(_count(job, "sent"), 1)
        lines.append("  sent, by notifier replica:")
        lines += [f"    {int(count):7d}  {100 * int(count) / sent:5.1f}%  {replica}"
                  for replica, count in sorted(replicas.items())]
    return "\n".join(lines)


def jobs_table(jobs: list[dict]) -> str:
    if not jobs:
        return "no jobs yet (heraldo jobs start NAME)"
    rows = [("JOB", "NAME", "STATUS", "PROGRESS", "SENT", "SKIPPED", "FAILED", "CREATED")]
    for job in jobs:
        selected, processed = _count(job, "selected"), _count(job, "processed")
        percent = 100 * processed / selected if selected else 100.0
        rows.append((job.get("jobId", ""), job.get("jobName", ""), _status(job),
                     f"{percent:.0f}% of {selected}", str(_count(job, "sent")),
                     str(_count(job, "skipped")), str(_count(job, "failed")),
                     str(job.get("createTime", ""))[:19]))
    widths = [max(len(row[index]) for row in rows) for index in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
                     .rstrip() for row in rows)


def parse_date(text: str) -> dict[str, int]:
    try:
        day = dt.date.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a date like 2011-12-31, got {text!r}") from exc
    return {"year": day.year, "month": day.month, "day": day.day}


def start_body(args: argparse.Namespace) -> dict:
    parameters: dict[str, Any] = {}
    if args.issued_from:
        parameters["issuedFrom"] = args.issued_from
    if args.issued_to:
        parameters["issuedTo"] = args.issued_to
    if args.country:
        parameters["countries"] = args.country
    if args.kind:
        parameters["kinds"] = [f"DOCUMENT_KIND_{kind.upper()}" for kind in args.kind]
    if args.template:
        parameters["template"] = args.template
    if args.chunk_size:
        parameters["chunkSize"] = args.chunk_size
    if args.skip_limit is not None:
        parameters["skipLimit"] = args.skip_limit
    if args.partitions:
        parameters["partitions"] = args.partitions
    body = {"jobName": args.name, "parameters": parameters}
    if args.new_instance:
        body["newInstance"] = True
    return body


def job_path(job_id: str, suffix: str = "") -> str:
    return f"/v1/jobs/{urllib.parse.quote(job_id, safe='')}{suffix}"


def watch_job(api: HttpApi, job_id: str, *, out=sys.stdout,
              sleep: Callable[[float], None] = time.sleep) -> dict:
    """Redraws the progress line until the job ends; returns the final job.

    On a terminal the line is redrawn in place; otherwise (a pipe, a CI log) a line is printed
    whenever the progress changes, so logs stay readable.
    """
    interactive = out.isatty()
    last, last_progress = "", None
    while True:
        job = api.call("GET", job_path(job_id))
        line = job_progress_line(job)
        progress = (job.get("status"), _count(job, "processed"))
        if interactive:
            columns = shutil.get_terminal_size((120, 20)).columns
            out.write("\r" + line[:columns - 1].ljust(min(len(last), columns - 1)))
            out.flush()
        elif progress != last_progress:
            print(line, file=out, flush=True)
        last, last_progress = line, progress
        if job.get("status") in TERMINAL:
            if interactive:
                out.write("\n")
            return job
        sleep(WATCH_POLL_S)


def run_jobs(args: argparse.Namespace, api: HttpApi) -> int:
    if args.jobs_command == "list":
        reply = api.call("GET", f"/v1/jobs?pageSize={args.limit}")
        jobs = reply.get("jobs", [])
        print(jobs_table(jobs))
        if reply.get("nextPageToken"):
            more = (f"--limit up to {MAX_PAGE_SIZE} shows more" if args.limit < MAX_PAGE_SIZE
                    else "REST's pageToken pages further")
            print(f"(the newest {len(jobs)} shown; {more})")
        return EXIT_OK
    if args.jobs_command == "start":
        job = api.call("POST", "/v1/jobs", start_body(args))
    elif args.jobs_command == "restart":
        job = api.call("POST", job_path(args.job_id, ":restart"), {})
    elif args.jobs_command == "stop":
        job = api.call("POST", job_path(args.job_id, ":stop"), {})
        print(f"job {job['jobId']} {_status(job)}: it stops after the chunk in flight")
        return EXIT_OK
    else:
        job = api.call("GET", job_path(args.job_id))
        if args.jobs_command == "show":
            print(job_details(job))
            return EXIT_OK
    if args.jobs_command in ("start", "restart"):
        print(f"job {job['jobId']} ({job.get('jobName')}) {_status(job)}")
        if not args.watch:
            return EXIT_OK
    final = watch_job(api, job["jobId"])
    print(job_details(final))
    # A job completes even when some of its emails failed (they are counted, with reasons): a
    # script that watches it needs to hear about those as well.
    completed = final.get("status") == "JOB_STATUS_COMPLETED"
    return EXIT_OK if completed and not _count(final, "failed") else EXIT_NOT_DONE


# --- send ------------------------------------------------------------------------------------

#: google.type.Money keeps whole units in an int64.
MAX_MONEY_UNITS = 2 ** 63


def money(amount: str, currency: str) -> dict:
    """``12.50`` GBP as ``google.type.Money`` JSON (units as a string, nanos as a number)."""
    try:
        value = decimal.Decimal(amount)
    except decimal.InvalidOperation as exc:
        raise InvalidArgument("--amount", f"{amount!r} is not a number like 12.50") from exc
    if not value.is_finite():
        raise InvalidArgument("--amount", f"{amount!r} is not a number like 12.50")
    if value.as_tuple().exponent < -9:
        raise InvalidArgument("--amount", f"{amount!r} has more than nine decimals")
    if abs(value) >= MAX_MONEY_UNITS:
        raise InvalidArgument("--amount", f"{amount!r} is too large")
    units = int(value)
    nanos = int((value - units) * 1_000_000_000)
    return {"currencyCode": currency.upper(), "units": str(units), "nanos": nanos}


def run_send(args: argparse.Namespace, api: HttpApi) -> int:
    body: dict[str, Any] = {
        "notificationId": args.id or f"adhoc-{uuid.uuid4().hex[:16]}",
        "invoiceNumber": args.invoice,
        "kind": "DOCUMENT_KIND_CREDIT_NOTE" if args.credit_note else "DOCUMENT_KIND_INVOICE",
        "recipient": {"name": args.name or "", "email": args.to, "locale": args.locale or ""},
        "amount": money(args.amount, args.currency),
    }
    for field, value in (("issueDate", args.issued), ("dueDate", args.due)):
        if value:
            body[field] = value
    if args.template:
        body["template"] = args.template
    result = api.call("POST", "/v1/notifications:send", body)
    status = str(result.get("status", "")).removeprefix("DELIVERY_STATUS_")
    details = [f"notification {result.get('notificationId')} {status}"]
    for label, key in (("by", "replicaId"), ("smtp", "smtpCode"), ("message-id", "messageId"),
                       ("detail", "detail")):
        if result.get(key):
            details.append(f"{label} {result[key]}")
    print("  ".join(details))
    return EXIT_OK if status in ("SENT", "DUPLICATE") else EXIT_NOT_DONE


# --- Consul: mesh status and config ----------------------------------------------------------

def consul_api(args: argparse.Namespace) -> HttpApi:
    address = (ConsulAddress.parse(args.consul, "--consul") if args.consul
               else ConsulAddress.from_env())
    return HttpApi(address.url, token=os.environ.get("CONSUL_HTTP_TOKEN", ""), what="Consul",
                   token_from="CONSUL_HTTP_TOKEN (is that address Consul's HTTP API?)")


#: Characters of a health check's output that ``mesh status`` shows.
MAX_CHECK_OUTPUT = 120


def mesh_status(api: HttpApi) -> tuple[str, bool]:
    """A table of every instance of every service with its check states; and whether all pass."""
    services = api.call("GET", "/v1/catalog/services") or {}
    rows = [("SERVICE", "INSTANCE", "ADDRESS", "PID", "HEALTH", "METRICS", "CHECK OUTPUT")]
    all_passing = True
    for name in sorted(services):
        if name == "consul":
            continue
        for entry in api.call("GET", f"/v1/health/service/{urllib.parse.quote(name)}") or []:
            service = entry.get("Service", {})
            checks = [check for check in entry.get("Checks", [])
                      if check.get("ServiceID") == service.get("ID")] or entry.get("Checks", [])
            states = {check.get("Status", "") for check in checks}
            health = ("critical" if "critical" in states else
                      "warning" if "warning" in states else "passing" if states else "no checks")
            all_passing = all_passing and health == "passing"
            # The worst check's output says why an instance is not passing.
            worst = sorted(checks, key=lambda check: check.get("Status") == "passing")
            output = " ".join(str(worst[0].get("Output", "")).split()) if worst else ""
            # The last column: long enough to say why, marked when cut.
            if len(output) > MAX_CHECK_OUTPUT:
                output = output[:MAX_CHECK_OUTPUT - 1] + "…"
            meta = service.get("Meta") or {}
            metrics = meta.get("metrics_port", "")
            rows.append((name, service.get("ID", ""),
                         f"{service.get('Address', '')}:{service.get('Port', '')}",
                         meta.get("pid", ""), health, f":{metrics}" if metrics else "", output))
    if len(rows) == 1:
        return "no services registered in Consul", False
    widths = [max(len(row[index]) for row in rows) for index in range(len(rows[0]))]
    table = "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
                      .rstrip() for row in rows)
    return table, all_passing


def settings_classes() -> dict[str, type]:
    """Each KV scope and the settings dataclass that reads it."""
    from heraldo.batch.settings import BatchSettings
    from heraldo.controlplane.settings import ControlPlaneSettings
    from heraldo.notifier.settings import NotifierSettings

    return {"batch": BatchSettings, "notifier": NotifierSettings,
            "controlplane": ControlPlaneSettings}


def validate_setting(key: str, value: str, current: dict[str, str]) -> list[str]:
    """Checks ``key=value`` against every service that reads it; returns those services.

    The value is converted to the field's type and the whole settings object is rebuilt from
    the current KV with the new value in it, so cross-field rules are checked too.

    Raises:
        ConfigError: the key is not a setting, or the value is not valid for a service.
    """
    scope, _, name = key.removeprefix(KV_PREFIX).partition("/")
    if not key.startswith(KV_PREFIX) or not name or "/" in name:
        raise ConfigError(f"{key}: a setting key is config/<service>/<name> "
                          f"or config/{SHARED_SCOPE}/<name>")
    classes = settings_classes()
    if scope != SHARED_SCOPE and scope not in classes:
        raise ConfigError(f"{key}: unknown service {scope!r}; known: "
                          f"{', '.join([SHARED_SCOPE, *sorted(classes)])}")
    readers = [service for service, cls in classes.items()
               if scope in (SHARED_SCOPE, service)
               and name in {field.name for field in dataclasses.fields(cls)}]
    if not readers:
        raise ConfigError(f"{key}: no service reads a setting named {name!r}")
    proposed = {**current, key: value}
    for service in readers:
        cls = classes[service]
        convert(value, get_type_hints(cls)[name], key)
        try:
            resolve(cls, service, proposed, env={})
        except ConfigError as exc:
            raise ConfigError(f"{key}={value!r} is not valid for {service}: "
                              f"{exc.__cause__ or exc}") from exc
    if name == "default_template":
        known = template_sets(current)
        if value.strip() not in known:
            raise ConfigError(f"{key}={value!r}: unknown template set; known: "
                              f"{', '.join(sorted(known))}")
    if key == "config/batch/templates":
        known = template_sets(current)
        named = [item.strip() for item in value.split(",") if item.strip()]
        unknown = sorted(set(named) - known)
        if not named or unknown:
            raise ConfigError(f"{key}={value!r}: expected template sets the notifiers have, "
                              f"comma-separated ({', '.join(sorted(known))}); "
                              + (f"unknown: {', '.join(unknown)}" if unknown else "none given"))
    return readers


def template_sets(kv: dict[str, str]) -> frozenset[str]:
    """The template sets the notifiers have: the built-in ones and those KV overrides add."""
    try:
        return Renderer(overrides=overrides_from_kv(kv)).template_sets
    except InvalidTemplate:
        # The notifiers refuse such overrides too, and keep rendering with the built-in sets.
        return Renderer().template_sets


def current_kv(api: HttpApi) -> dict[str, str]:
    entries = api.call("GET", "/v1/kv/config/?recurse=true", allow_missing=True) or []
    return {entry["Key"]: base64.b64decode(entry.get("Value") or "").decode("utf-8")
            for entry in entries if not entry["Key"].endswith("/")}


def run_config(args: argparse.Namespace, api: HttpApi) -> int:
    kv = current_kv(api)
    if args.config_command == "get":
        if args.key:
            if args.key not in kv:
                raise NotFound(f"{args.key} is not set in Consul KV at {api.base_url}")
            print(kv[args.key])
            return EXIT_OK
        width = max((len(key) for key in kv), default=0)
        print("\n".join(f"{key.ljust(width)}  {value}" for key, value in sorted(kv.items()))
              or "no settings in Consul KV (heraldo setup writes the defaults)")
        return EXIT_OK
    if args.key.startswith(OVERRIDE_PREFIX):
        return set_template(api, args.key, args.value, kv)
    # Stored as it was validated, without the blanks a shell quote may have kept around it.
    value = args.value.strip()
    # Validated against the seed under KV: a key not in KV yet is still at its default.
    readers = validate_setting(args.key, value, {**load_seed(), **kv})
    if api.call("PUT", f"/v1/kv/{args.key}", raw=value.encode("utf-8")) is not True:
        raise RequestFailed(f"Consul did not store {args.key}")
    print(f"{args.key} = {value!r}; " + "; ".join(
        when_applied(service, args.key.rsplit("/", 1)[1]) for service in readers))
    return EXIT_OK


def set_template(api: HttpApi, key: str, value: str, kv: dict[str, str]) -> int:
    """Writes a template override once it renders, with the other overrides in KV, as the
    notifiers would check it; ``@FILE`` reads the source from FILE."""
    if value.startswith("@"):
        try:
            value = Path(value[1:]).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the template {value[1:]}: {exc}") from exc
    when = "the notifiers apply it within seconds"
    if not value.strip():
        when = "an empty override is none: the notifiers drop it within seconds"
    own = key.removeprefix(OVERRIDE_PREFIX).rsplit("/", 1)[0]
    built_in = Renderer().set_languages
    # Checked with the overrides of the built-in sets and languages and of its own: another new
    # set still being written file by file is not this file's problem.
    overrides = {name: source for name, source in overrides_from_kv({**kv, key: value}).items()
                 if name.rsplit("/", 1)[0] in built_in | {own}}
    try:
        Renderer(overrides=overrides)
    except IncompleteTemplates as exc:
        # A new set or language is written one file at a time: this one need only compile, and
        # the notifiers take the whole once its last file is in.
        try:
            jinja2.Environment().parse(value)
        except jinja2.TemplateSyntaxError as syntax:
            raise ConfigError(f"{key}: TemplateSyntaxError: {syntax}") from syntax
        when = (f"the notifiers use it once the {len(exc.missing)} other files of its set and "
                f"language are in KV too (next: {OVERRIDE_PREFIX}{exc.missing[0]})")
    except InvalidTemplate as exc:
        raise ConfigError(str(exc)) from exc
    if api.call("PUT", f"/v1/kv/{key}", raw=value.encode("utf-8")) is not True:
        raise RequestFailed(f"Consul did not store {key}")
    lines = len(value.splitlines())
    print(f"{key} = {lines} line{'s' if lines != 1 else ''}; {when}")
    return EXIT_OK


def when_applied(service: str, name: str) -> str:
    """When ``service`` sees a new value of ``name``: say so rather than let it look live."""
    # The notifier follows KV (heraldo.notifier.reload); what it sets up once at start (logging,
    # its Consul health check) still needs a restart. The others read settings only at start.
    if service == "notifier" and name not in NOTIFIER_START_ONLY:
        return "the notifiers apply it within seconds"
    return f"read by {service} at its next start"


# --- import with a progress bar --------------------------------------------------------------

def count_lines(path: str) -> int:
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            return max(sum(1 for _ in handle) - 1, 0)
    except (OSError, EOFError):
        return 0


def run_import(argv: list[str]) -> int:
    """``import online-retail FILE`` gets a progress bar over the file's lines; rest as is."""
    from heraldo.importer import __main__ as importer

    if argv[:1] != ["online-retail"] or len(argv) < 2 or not sys.stderr.isatty():
        return importer.main(argv, prog="heraldo import")
    total = count_lines(argv[1])
    started = time.monotonic()

    def show(lines_read: int) -> None:
        elapsed_s = max(time.monotonic() - started, 1e-6)
        rate = lines_read / elapsed_s
        left = (total - lines_read) / rate if rate and total else -1
        sys.stderr.write(f"\r{progress_bar(lines_read, total)} {lines_read:,}/{total:,} lines"
                         f"  {rate:,.0f}/s  left {format_duration(left)}   ")
        if lines_read >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    # The importer reports progress through this module-level hook; the bar replaces it.
    importer._print_progress = show
    return importer.main(argv, prog="heraldo import")


# --- setup and probe -------------------------------------------------------------------------

def parse_overrides(text: str) -> dict[str, str]:
    """``key=value,key=value`` (from ``HERALDO_SEED_OVERRIDES``) as a dict; raises ConfigError."""
    overrides = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("config/"):
            raise ConfigError(f"HERALDO_SEED_OVERRIDES: {item!r} is not config/<key>=<value>")
        overrides[key] = value
    return overrides


async def setup() -> int:
    address = ConsulAddress.from_env()
    seed = {**load_seed(), **parse_overrides(os.environ.get("HERALDO_SEED_OVERRIDES", ""))}
    client = address.client()
    try:
        written = await seed_kv(client, seed)
    except Exception as exc:  # noqa: BLE001 - any failure here means Consul is not usable
        raise Unavailable(f"cannot reach Consul at {address.url}: {exc}") from exc
    finally:
        await client.http._session.close()
    engine = db.create_engine(db.database_url())
    try:
        await db.create_schema(engine)
    finally:
        await engine.dispose()
    print(f"seeded {written} new KV keys at {address.url}; "
          f"schema ready in {db.describe(db.database_url())}")
    return 0


async def db_upgrade() -> int:
    engine = db.create_engine(db.database_url())
    try:
        await db.create_schema(engine)
    finally:
        await engine.dispose()
    from heraldo.migrations import head_revision

    print(f"schema at revision {head_revision()} in {db.describe(db.database_url())}")
    return 0


async def probe(target: str) -> int:
    async with grpc.aio.insecure_channel(target) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=PROBE_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            raise Unavailable(f"{target}: {exc.code().name} {exc.details()}") from exc
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{target}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


# --- the parser ------------------------------------------------------------------------------

_positive_int = whole_number(1, "a positive number")
_skip_limit = whole_number(-1, "0 or more, or -1 for no limit")


def _non_empty(expected: str) -> Callable[[str], str]:
    """An argparse type: text with something besides blanks (an empty shell variable is not)."""

    def parse(text: str) -> str:
        if not text.strip():
            raise argparse.ArgumentTypeError(f"expected {expected}, got an empty value")
        return text.strip()

    return parse


def _edge_url(text: str) -> str:
    """An argparse type: an http(s) URL of a host and port, as the edge is reached.

    A path is allowed (an edge behind a proxy's prefix); a query, a fragment or a user name is
    not, since the request paths are appended to it.
    """
    expected = (f"expected an http:// or https:// URL such as {DEFAULT_EDGE_URL} (from --edge "
                f"or HERALDO_EDGE_URL), got {text!r}")
    try:
        parts = urllib.parse.urlsplit(text.strip())
        port = parts.port
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{expected} ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or port == 0:
        raise argparse.ArgumentTypeError(expected)
    if parts.query or parts.fragment or parts.username is not None:
        raise argparse.ArgumentTypeError(f"{expected} (without user, query or fragment)")
    return text.strip()


def build_parser() -> argparse.ArgumentParser:
    # The module's docstring, without the code markup meant for readers of the source.
    parser = OneLineParser(prog="heraldo", description=__doc__.replace("``", ""),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"heraldo {__version__}")
    edge = argparse.ArgumentParser(add_help=False)
    edge.add_argument("--edge", type=_edge_url,
                      default=os.environ.get("HERALDO_EDGE_URL", DEFAULT_EDGE_URL),
                      help="Envoy's edge (env HERALDO_EDGE_URL; default %(default)s)")
    edge.add_argument("--credentials", metavar="FILE",
                      help=f"JSON with a 'token' or 'authorization' (default "
                           f"{DEFAULT_CREDENTIALS} if it exists)")
    consul = argparse.ArgumentParser(add_help=False)
    consul.add_argument("--consul", metavar="HOST:PORT",
                        help="Consul's HTTP API (env CONSUL_HTTP_ADDR; default 127.0.0.1:8500)")
    commands = parser.add_subparsers(dest="command", required=True)

    jobs = commands.add_parser("jobs", help="start, list, show, watch, stop, restart jobs")
    job_commands = jobs.add_subparsers(dest="jobs_command", required=True)
    start = job_commands.add_parser("start", parents=[edge], help="start a job")
    start.add_argument("name", help="job name; with the parameters it names the job instance")
    start.add_argument("--from", dest="issued_from", type=parse_date, metavar="DATE",
                       help="invoices issued on or after this day (2011-12-01)")
    start.add_argument("--to", dest="issued_to", type=parse_date, metavar="DATE",
                       help="invoices issued on or before this day")
    start.add_argument("--country", action="append", help="customer country (repeatable)")
    start.add_argument("--kind", action="append", choices=("invoice", "credit_note"),
                       help="document kind (repeatable; default invoice)")
    start.add_argument("--template", help="template set (default: the notifier's)")
    start.add_argument("--chunk-size", type=_positive_int, help="invoices per chunk")
    start.add_argument("--skip-limit", type=_skip_limit, metavar="N",
                       help="skipped invoices allowed before the job fails; -1 for no limit")
    start.add_argument("--partitions", type=_positive_int, metavar="N",
                       help="slices of the job that batch replicas run in parallel")
    start.add_argument("--new-instance", action="store_true",
                       help="run again as a new instance even if this one completed "
                            "(its customers are notified again)")
    start.add_argument("--watch", action="store_true", help="follow it until it ends")
    listing = job_commands.add_parser("list", parents=[edge], help="newest jobs first")
    listing.add_argument("--limit", default=20, type=whole_number(
                             1, f"1 to {MAX_PAGE_SIZE}", maximum=MAX_PAGE_SIZE),
                         help="how many jobs at most (%(default)s)")
    for name, text in (("show", "a job's counts, reasons and replicas"),
                       ("watch", "a live progress bar until the job ends"),
                       ("stop", "stop after the chunk in flight"),
                       ("restart", "restart a stopped or failed job from its checkpoint")):
        command = job_commands.add_parser(name, parents=[edge], help=text)
        command.add_argument("job_id", type=_non_empty("a job id"),
                             help="the job's id, as jobs start and jobs list print it")
        if name == "restart":
            command.add_argument("--watch", action="store_true", help="follow it until it ends")

    send = commands.add_parser("send", parents=[edge], help="send one ad-hoc notification")
    send.add_argument("--to", required=True, metavar="EMAIL", help="recipient's address")
    send.add_argument("--name", help="recipient's name")
    send.add_argument("--invoice", required=True, metavar="NUMBER", help="invoice number")
    send.add_argument("--amount", required=True, help="e.g. 12.50")
    send.add_argument("--currency", default="GBP", help="ISO 4217 code (%(default)s)")
    send.add_argument("--issued", type=parse_date, metavar="DATE", help="issue date (2011-12-01)")
    send.add_argument("--due", type=parse_date, metavar="DATE", help="due date (2011-12-31)")
    send.add_argument("--credit-note", action="store_true", help="a credit note, not an invoice")
    send.add_argument("--template", help="template set (default: the notifier's)")
    send.add_argument("--locale", help="e.g. es-ES (default: the notifier's)")
    send.add_argument("--id", type=_non_empty("a notification id"),
                      help="notification id (default: a new one); resending one is a "
                           "DUPLICATE, not a second mail")

    mesh = commands.add_parser("mesh", help="the mesh as Consul sees it")
    mesh_commands = mesh.add_subparsers(dest="mesh_command", required=True)
    mesh_commands.add_parser("status", parents=[consul],
                             help="services, replicas and health checks")

    config = commands.add_parser("config", help="settings in Consul KV")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    get = config_commands.add_parser("get", parents=[consul], help="show one key or all")
    get.add_argument("key", nargs="?", help="one key (default: every key under config/)")
    put = config_commands.add_parser("set", parents=[consul], help="validate and write a key")
    put.add_argument("key", help="config/<service>/<name>, config/application/<name>, or "
                                 f"{OVERRIDE_PREFIX}<set>/<language>/<file>")
    put.add_argument("value", help="checked against the settings of every service reading it; "
                                   "for a template, @FILE reads its source from FILE")

    commands.add_parser("import", help="load invoices (heraldo import --help)")
    commands.add_parser("setup", help="seed Consul KV and create the schema")
    db_parser = commands.add_parser("db", help="database schema migrations (DATABASE_URL)")
    db_parser.add_argument("action", choices=("upgrade",),
                           help="upgrade: migrate the database to the newest schema")
    probe_parser = commands.add_parser("probe", help="gRPC health check of HOST:PORT")
    probe_parser.add_argument("target", metavar="HOST:PORT",
                              help="a gRPC server with health checks")
    return parser


def dispatch(args: argparse.Namespace) -> int:
    if args.command == "setup":
        return asyncio.run(setup())
    if args.command == "probe":
        return asyncio.run(probe(args.target))
    if args.command == "db":
        return asyncio.run(db_upgrade())
    if args.command in ("jobs", "send"):
        api = HttpApi(args.edge, token=read_token(args.credentials))
        return run_jobs(args, api) if args.command == "jobs" else run_send(args, api)
    if args.command == "mesh":
        table, all_passing = mesh_status(consul_api(args))
        print(table)
        return EXIT_OK if all_passing else EXIT_NOT_DONE
    return run_config(args, consul_api(args))


def use_local_mesh_addresses(path: Path = LOCAL_MESH_FILE) -> None:
    """Takes the edge, Consul and database of the mesh ``make up`` runs here (``var/mesh.json``)
    as defaults, so moved ports need no flags; the environment still wins."""
    try:
        mesh = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    defaults = (("HERALDO_EDGE_URL", "edge_url"), ("CONSUL_HTTP_ADDR", "consul_http_addr"),
                ("DATABASE_URL", "database_url"))
    for variable, key in defaults:
        if isinstance(mesh.get(key), str) and mesh[key]:
            os.environ.setdefault(variable, mesh[key])


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        # Only for a real command line: tests and embedders pass argv and their own environment.
        use_local_mesh_addresses()
        argv = sys.argv[1:]
    try:
        if argv[:1] == ["import"]:
            return run_import(argv[1:])
        args = build_parser().parse_args(argv)
        return dispatch(args)
    except HeraldoError as exc:
        print(f"heraldo: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader (head, less) went away: not an error worth a traceback.
        sys.stderr.close()
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

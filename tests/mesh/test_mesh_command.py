"""``python -m heraldo.mesh up`` (``make up``) as a user runs it: stopped with Ctrl-C or SIGTERM,
it stops the services before the Consul they deregister from, and leaves nothing behind."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys

import pytest

from heraldo.mesh.ports import port_is_free
from heraldo.mesh.supervisor import MeshPorts

SERVICE_LOGS = ("batch.log", "notifier-1.log", "controlplane.log")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_mesh_in_order_and_frees_its_ports(tmp_path, make_database, signum):
    ports = MeshPorts.free(notifiers=1)
    env = {**os.environ, "DATABASE_URL": asyncio.run(make_database()), "PYTHONUNBUFFERED": "1",
           **{f"HERALDO_{item.name.upper()}_PORT": str(getattr(ports, item.name))
              for item in dataclasses.fields(ports)}}
    env.pop("CONSUL_HTTP_ADDR", None)
    workdir = tmp_path / "var"
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "heraldo.mesh", "up", "--workdir", str(workdir),
         "--notifiers", "1", "--invoices", "20"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output = []
        for line in supervisor.stdout:
            output.append(line)
            if "Press Ctrl-C to stop" in line:
                break
        else:
            raise AssertionError(f"the mesh did not come up:\n{''.join(output)}")

        supervisor.send_signal(signum)
        rest, _ = supervisor.communicate(timeout=90)
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()

    assert supervisor.returncode == 0, rest
    assert f"mesh stopped signal={signum.name}" in rest
    for name in SERVICE_LOGS:
        log = (workdir / "logs" / name).read_text()
        assert "could not deregister" not in log, f"{name}:\n{log}"
    # The batch stops first, while the notifiers still answer its chunk in flight.
    batch_stopped = _stopped_at(workdir / "logs" / "batch.log")
    assert batch_stopped <= _stopped_at(workdir / "logs" / "notifier-1.log")
    listened = [ports.edge, ports.consul, ports.batch, ports.first_notifier, ports.smtp]
    assert all(port_is_free(port) for port in listened)


def _stopped_at(log_path) -> str:
    """The timestamp of the service's "stopped" line (its log lines start with name and time)."""
    line = next(line for line in log_path.read_text().splitlines() if " stopped service=" in line)
    return " ".join(line.split()[1:3])

"""Choosing a free port for a process that will listen on it a moment later.

The usual trick, binding port 0 and closing the socket, hands out a port from the kernel's
ephemeral range. Until the child process binds it, any outgoing connection on the host (to
PostgreSQL, Consul, Envoy) may take that same port as its source port, and the child then fails
with "address already in use". On a busy test machine that happened within seconds. Ports below
the ephemeral range are never given to outgoing connections, so only another listener can take
them first, and this module does not give the same one out twice.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

#: Where the kernel says which ports it gives to outgoing connections.
EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
#: Above every default port of the mesh (the highest below it is the control plane's 18000).
LOWEST_CHOSEN = 20000

_given_out: set[int] = set()
_random = random.Random()


def ephemeral_range() -> range:
    """The kernel's ephemeral port range; Linux's default where the file cannot be read."""
    try:
        low, high = EPHEMERAL_RANGE_FILE.read_text().split()
        return range(int(low), int(high) + 1)
    except (OSError, ValueError):
        return range(32768, 61000)


def port_is_free(port: int) -> bool:
    """True when a listener could bind ``port`` on 127.0.0.1 now."""
    with socket.socket() as sock:
        # A port whose last connections linger in TIME_WAIT is free for a listener.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_ports(count: int = 1) -> int:
    """The first of ``count`` consecutive ports, all free now and not given out before.

    Drawn below the ephemeral range when the kernel leaves room there; otherwise the kernel
    picks, with the race described in this module's docstring.
    """
    upper = ephemeral_range().start
    if upper - LOWEST_CHOSEN < 1000:
        return _kernel_chosen(count)
    for _ in range(1000):
        start = _random.randrange(LOWEST_CHOSEN, upper - count + 1)
        run = range(start, start + count)
        if _given_out.isdisjoint(run) and all(port_is_free(port) for port in run):
            _given_out.update(run)
            return start
    raise OSError(f"no {count} consecutive free ports between {LOWEST_CHOSEN} and {upper}")


def free_port() -> int:
    """One port, free now, for a process that will bind it shortly."""
    return free_ports(1)


def _kernel_chosen(count: int) -> int:
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            start = sock.getsockname()[1]
        run = range(start, start + count)
        if _given_out.isdisjoint(run) and all(port_is_free(port) for port in run):
            _given_out.update(run)
            return start

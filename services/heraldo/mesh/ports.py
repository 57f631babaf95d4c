"""Choosing a free port for a process that will listen on it a moment later.

The usual trick, binding port 0 and closing the socket, hands out a port from the kernel's
ephemeral range. Until the child process binds it, any outgoing connection on the host (to
PostgreSQL, Consul, Envoy) may take that same port as its source port, and the child then fails
with "address already in use". On a busy test machine that happened within seconds. Ports below
the ephemeral range are never given to outgoing connections, so only another listener can take
them first, and this module does not give the same one out twice within a process.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

#: Where the kernel says which ports it gives to outgoing connections.
EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
#: No default port of the mesh lies between this and the ephemeral range (the control plane's
#: 18000 is below it; the batch's 50051 and the notifiers' 50061 and up are inside the range).
LOWEST_CHOSEN = 20000
#: Attempts at finding free ports before giving up.
ATTEMPTS = 1000

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


def free_port_range(count: int = 1) -> range:
    """``count`` consecutive ports, all free now and not given out before by this process.

    Drawn below the ephemeral range when the kernel leaves room there; otherwise the kernel
    picks, with the race described in this module's docstring.

    Raises:
        OSError: no such run of ports was found.
    """
    upper = ephemeral_range().start
    room_below = upper - LOWEST_CHOSEN >= ATTEMPTS
    for _ in range(ATTEMPTS):
        start = (_random.randrange(LOWEST_CHOSEN, upper - count + 1) if room_below
                 else _kernel_chosen())
        run = range(start, start + count)
        if run.stop <= 65536 and _given_out.isdisjoint(run) and all(map(port_is_free, run)):
            _given_out.update(run)
            return run
    raise OSError(f"no {count} consecutive free ports found on 127.0.0.1")


def free_port() -> int:
    """One port, free now, for a process that will bind it shortly."""
    return free_port_range(1).start


def _kernel_chosen() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]

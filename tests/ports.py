"""A rendezvous port for the two-process tests that no neighbouring test can take in the meantime."""

from __future__ import annotations

import random
import socket
from pathlib import Path


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def unused_port() -> int:
    """A free port below the kernel's ephemeral range.

    Binding port 0 and closing it (what Lightning and the usual probe do) hands back a port the kernel may give
    to the very next socket that binds port 0 - under pytest-xdist, a gloo connection of the test running
    beside this one - before the rendezvous binds it. The kernel never numbers a socket below its ephemeral
    range by itself, so a free port there stays free unless another test draws the same one (1 in 10,000s).
    """
    low = _ephemeral_low()
    draw = random.Random()  # its own generator: tests seed the global one
    for _ in range(200):
        port = draw.randrange(10000, max(low, 10001))
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")

"""Free local ports for Flower's processes, chosen outside the kernel's ephemeral range.

A port from `bind(0)` is released before Flower binds it, and the kernel hands the same
ephemeral range to every outgoing connection meanwhile (a SuperNode dialling its SuperLink
can take it); ports below that range, never handed out twice by this process, cannot race so.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_GIVEN: set[int] = set()


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default; other systems start higher


def free_port(host: str = "127.0.0.1") -> int:
    """A port on `host` that nothing listens on now and this process has not handed out before."""
    high = max(_ephemeral_start() - 1, 20001)
    for _ in range(200):
        port = random.randint(20000, high)
        if port in _GIVEN:
            continue
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _GIVEN.add(port)
        return port
    raise OSError(f"no free port found on {host} between 20000 and {high}")

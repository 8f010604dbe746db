"""Loopback addresses and the write-key header: what every server, test and benchmark here needs."""

from __future__ import annotations

import base64
import socket

HOST = "127.0.0.1"  # every byte of traffic stays on loopback


def free_port() -> int:
    """A port nothing listens on right now. Another listener (or an outgoing connection's source port) can
    still take it before the caller binds it: a child that must bind it checks for EADDRINUSE and retries
    (testkit.service.Service.start)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def basic(key: str) -> dict[str, str]:
    """Segment's convention: the write key as HTTP Basic username, empty password."""
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}

"""``HOST:PORT`` listen addresses for the metrics endpoints (agent and host), loopback checks."""

from __future__ import annotations

import ipaddress

_MAX_PORT = 65535


def split_listen(value: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[::1]:9101`` for IPv6) into host and port.

    Raises:
        ValueError: Not ``HOST:PORT`` with a port from 1 to 65535, saying what was wrong.
    """
    host, sep, port_text = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) <= _MAX_PORT:
        msg = (
            f"listen address {value!r} is not HOST:PORT with a port from 1 to 65535 "
            '(e.g. "127.0.0.1:9101" or "[::1]:9101")'
        )
        raise ValueError(msg)
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

"""The broker URL, one value type for the host, the device config and the demo.

``mqtt://[USER[:PASSWORD]@]HOST[:PORT]`` is plain MQTT, ``mqtts://...`` is MQTT over TLS;
the port defaults to 1883 and 8883. HOST is a host name, an IPv4 address or an IPv6
address in brackets (``mqtt://[::1]:1883``). A path, query or fragment is refused rather
than ignored: MQTT has no use for one, so it is a sign of a wrong URL (an ``http://``
address pasted by mistake, a topic appended to the broker).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Final, Literal, cast
from urllib.parse import quote, unquote

from edgefleet.shared.errors import BrokerUrlError

Scheme = Literal["mqtt", "mqtts"]
DEFAULT_PORTS: Final[dict[str, int]] = {"mqtt": 1883, "mqtts": 8883}
MAX_PORT: Final = 65535
# Host names and IPv4 addresses; "_" is not valid DNS but common in container networks.
_HOST_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9._-]{0,252})")
_EXPECTED = (
    "is not mqtts://HOST:PORT or mqtt://HOST:PORT "
    "(for example mqtts://broker.example:8883 or mqtt://127.0.0.1:1883)"
)


@dataclass(frozen=True)
class BrokerUrl:
    """A validated broker URL; make one with :meth:`parse` or from its parts.

    Attributes:
        scheme: ``"mqtt"`` (plain) or ``"mqtts"`` (TLS).
        host: Host name or IP address, lower case, an IPv6 address without brackets.
        port: TCP port, 1 to 65535.
        username: User name from the URL, if any.
        password: Password from the URL, if any; never shown by ``str`` or ``repr``.

    Raises:
        BrokerUrlError: A part is invalid (on construction, as from :meth:`parse`).
    """

    scheme: Scheme
    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # Validated here, not only in parse(), so no invalid BrokerUrl can exist at all.
        problem = _problem(self.scheme, self.host, self.port)
        if problem is not None:
            raise _invalid(f"{self.scheme}://{_bracketed(self.host)}:{self.port}", problem)
        object.__setattr__(self, "host", self.host.lower())

    @property
    def tls(self) -> bool:
        """True for ``mqtts://``."""
        return self.scheme == "mqtts"

    def __str__(self) -> str:
        """The URL with the user name but without the password: safe to log and print."""
        user = f"{quote(self.username, safe='')}@" if self.username is not None else ""
        return f"{self.scheme}://{user}{_bracketed(self.host)}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> BrokerUrl:
        """Parse ``mqtt://[USER[:PASSWORD]@]HOST[:PORT]`` or ``mqtts://...``.

        Raises:
            BrokerUrlError: Not such a URL; the message says which part is wrong (and never
                repeats a password).
        """
        shown = _redacted(text)
        scheme, sep, rest = text.partition("://")
        if not sep:
            raise _invalid(shown, "it has no scheme (mqtt:// or mqtts://)")
        scheme = scheme.lower()
        if scheme not in DEFAULT_PORTS:
            raise _invalid(shown, f"the scheme {scheme!r} is not mqtt or mqtts")
        netloc, tail = _split_tail(rest)
        if tail not in ("", "/"):
            raise _invalid(shown, f"it has a path, query or fragment ({tail!r}); remove it")
        userinfo, at, hostport = netloc.rpartition("@")
        username, password = _credentials(userinfo) if at else (None, None)
        host, port_text = _split_host_port(shown, hostport)
        port = _port(shown, port_text) if port_text is not None else DEFAULT_PORTS[scheme]
        problem = _problem(scheme, host, port)
        if problem is not None:
            raise _invalid(shown, problem)
        return cls(cast("Scheme", scheme), host, port, username, password)


def _problem(scheme: str, host: str, port: int) -> str | None:
    """What is wrong with these parts, or None."""
    if scheme not in DEFAULT_PORTS:
        return f"the scheme {scheme!r} is not mqtt or mqtts"
    if not host:
        return "the host is empty"
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return f"{host!r} is not an IPv6 address"
    elif not _HOST_NAME.fullmatch(host):
        return f"the host {host!r} is not a host name or IP address"
    if isinstance(port, bool) or not 1 <= port <= MAX_PORT:
        return f"invalid port {port!r}: it must be a number from 1 to {MAX_PORT}"
    return None


def _invalid(shown: str, problem: str) -> BrokerUrlError:
    return BrokerUrlError(f"broker URL {shown!r} {_EXPECTED}: {problem}")


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _split_tail(rest: str) -> tuple[str, str]:
    """Split after ``://`` into the authority and whatever follows it (path, query, ...)."""
    cut = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    return rest[:cut], rest[cut:]


def _credentials(userinfo: str) -> tuple[str | None, str | None]:
    user, colon, password = userinfo.partition(":")
    return unquote(user) or None, unquote(password) if colon else None


def _split_host_port(shown: str, hostport: str) -> tuple[str, str | None]:
    """``host[:port]`` or ``[v6]:port`` -> (host without brackets, port text or None)."""
    if hostport.startswith("["):
        host, bracket, after = hostport[1:].partition("]")
        if not bracket or (after and not after.startswith(":")):
            raise _invalid(shown, "an IPv6 address must be written [ADDRESS] or [ADDRESS]:PORT")
        return host, after[1:] if after else None
    if hostport.count(":") > 1:
        raise _invalid(shown, "an IPv6 address must be in brackets: mqtt://[::1]:1883")
    host, colon, port = hostport.partition(":")
    return host, port if colon else None


def _port(shown: str, text: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise _invalid(shown, f"invalid port {text!r}: it must be a number from 1 to {MAX_PORT}")
    return int(text)


def _redacted(text: str) -> str:
    """``text`` with any password replaced by ``***``, for error messages."""
    scheme, sep, rest = text.partition("://")
    netloc, tail = _split_tail(rest)
    userinfo, at, hostport = netloc.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return text
    return f"{scheme}{sep}{userinfo.partition(':')[0]}:***@{hostport}{tail}"

"""Operator accounts, sessions and CSRF tokens of the dashboard.

Accounts live in ``FLEET_DIR/dashboard-users.json`` (mode 0600, written atomically): one
scrypt hash per user (n=2^14, r=8, p=1: 16 MiB of memory per guess, the memory-hard cost the
issue asks for, from the standard library). Sessions are random 256-bit tokens kept in memory
(a restart logs everyone out) and expire after :data:`SESSION_S`. Every form carries a CSRF
token: an HMAC, under a per-process secret, of the session token - or, before login, of a
random pre-session cookie - so a page on another site can neither read nor forge it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from edgefleet.host.errors import FleetError
from edgefleet.shared.atomic import write_atomic

USERS_FILE = "dashboard-users.json"
SESSION_S = 8 * 3600.0
USER_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
MIN_PASSWORD = 8
_N, _R, _P = 2**14, 8, 1
_MAXMEM = 64 * 2**20


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """``scrypt$n$r$p$salt$hash`` (base64) for ``password``."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, maxmem=_MAXMEM)
    b64 = base64.b64encode
    return f"scrypt${_N}${_R}${_P}${b64(salt).decode()}${b64(digest).decode()}"


def check_password(password: str, stored: str) -> bool:
    """True if ``password`` matches ``stored`` (constant-time compare; False if malformed)."""
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        got = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            maxmem=_MAXMEM,
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, base64.b64decode(digest))


class Users:
    """The accounts file of one fleet directory.

    Raises:
        FleetError: The file exists but cannot be read or is not an accounts file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._hashes: dict[str, str] = {}
        if path.exists():
            try:
                data = json.loads(path.read_text())
                self._hashes = {str(k): str(v) for k, v in data["users"].items()}
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                raise FleetError(
                    f"cannot read dashboard accounts {path}: {exc}; fix or delete the file "
                    "and add users again with `edgefleet dashboard --add-user NAME`"
                ) from exc

    def __bool__(self) -> bool:
        return bool(self._hashes)

    def names(self) -> list[str]:
        """The account names."""
        return sorted(self._hashes)

    def add(self, name: str, password: str) -> None:
        """Add or replace an account and write the file (0600, atomically).

        Raises:
            FleetError: A bad name or a password shorter than 8 characters.
        """
        if not USER_RE.match(name):
            raise FleetError(f"user name {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
        if len(password) < MIN_PASSWORD:
            raise FleetError(f"the password must have at least {MIN_PASSWORD} characters")
        self._hashes[name] = hash_password(password)
        text = json.dumps({"users": self._hashes}, indent=1, sort_keys=True) + "\n"
        write_atomic(self.path, text.encode(), mode=0o600)

    def verify(self, name: str, password: str) -> bool:
        """True if the account exists and the password is right (same cost either way)."""
        stored = self._hashes.get(name)
        if stored is None:
            check_password(password, hash_password("x", salt=b"0" * 16))  # equal timing
            return False
        return check_password(password, stored)


@dataclass
class Sessions:
    """Logged-in sessions (token -> user, expiry) and CSRF tokens."""

    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    ttl_s: float = SESSION_S
    _live: dict[str, tuple[str, float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, user: str) -> str:
        """A new session token for ``user``."""
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._live[token] = (user, time.monotonic() + self.ttl_s)
        return token

    def user(self, token: str | None) -> str | None:
        """The user of a live session, or None."""
        if not token:
            return None
        with self._lock:
            entry = self._live.get(token)
            if entry is None:
                return None
            if entry[1] < time.monotonic():
                del self._live[token]
                return None
            return entry[0]

    def end(self, token: str | None) -> None:
        """Log a session out."""
        with self._lock:
            self._live.pop(token or "", None)

    def csrf(self, bound_to: str) -> str:
        """The CSRF token of a session (or pre-session) cookie value."""
        return hmac.new(self.secret, bound_to.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, bound_to: str | None, token: str | None) -> bool:
        """True if ``token`` is the CSRF token of ``bound_to``."""
        if not bound_to or not token:
            return False
        return hmac.compare_digest(self.csrf(bound_to), token)

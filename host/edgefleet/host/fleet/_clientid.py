"""Host MQTT client ids that no device can predict or take (docs/fleet.md, "Client ids").

Every host id starts with ``edgefleet-host-`` (outside the device-id namespace the broker
ties to device certificates) and ends in something a device cannot compute: random per
process (:func:`random_client_id`), or, for a persistent session that must survive a
restart, an HMAC of the worker's name under a random secret kept in the host state dir
(:func:`stable_client_id`). A device that knows the fleet's prefix and worker names still
cannot compute the ingest listener's id, so it cannot connect with it and kick the listener
off (a broker closes the older of two connections with one client id).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path

from edgefleet.host.errors import FleetError
from edgefleet.shared.atomic import write_atomic

HOST_CLIENT_PREFIX = "edgefleet-host-"
CLIENT_SECRET_FILE = "client-id.secret"  # noqa: S105 - a file name
_SECRET_HEX = 64  # 32 random bytes, hex


def random_client_id(role: str = "cli") -> str:
    """A fresh host client id: ``edgefleet-host-{role}-`` + 64 random bits."""
    return f"{HOST_CLIENT_PREFIX}{role}-{secrets.token_hex(8)}"


def stable_client_id(role: str, name: str, *, state_dir: Path) -> str:
    """A host client id that is the same on every start but unguessable without the state dir.

    ``edgefleet-host-{role}-`` + HMAC-SHA256(secret, role + name), truncated to 96 bits; the
    secret is 32 random bytes in ``state_dir/client-id.secret`` (0600, created on first use).
    Workers sharing a state dir get distinct ids by ``name``.

    Raises:
        FleetError: The secret cannot be read or created.
    """
    secret = _client_secret(state_dir)
    digest = hmac.new(secret, f"{role}\0{name}".encode(), hashlib.sha256).hexdigest()
    return f"{HOST_CLIENT_PREFIX}{role}-{digest[:24]}"


def _client_secret(state_dir: Path) -> bytes:
    path = state_dir / CLIENT_SECRET_FILE
    try:
        if not path.exists():
            # Not overwritten: a concurrent first start either wins or reads the winner's
            # complete secret, never half a file.
            secret = secrets.token_hex(_SECRET_HEX // 2) + "\n"
            write_atomic(path, secret.encode("ascii"), mode=0o600, overwrite=False)
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeError) as exc:
        raise FleetError(
            f"cannot read or create the host client-id secret {path}: {exc}; check the "
            "state dir's permissions (--state-dir)"
        ) from exc
    if len(text) != _SECRET_HEX or any(c not in "0123456789abcdef" for c in text):
        raise FleetError(
            f"{path} is not an edgefleet client-id secret (64 hex digits); delete it to make "
            "a new one (persistent host sessions then start afresh)"
        )
    return bytes.fromhex(text)

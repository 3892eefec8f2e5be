"""The account Mosquitto runs as, and what it must be able to read in the fleet directory.

Started as root, ``mosquitto -c fleet/broker/mosquitto.conf`` drops to the ``user`` of its
config (``mosquitto`` by default) before it opens the ACL, CRL, certificates and its
persistence directory. The fleet directory is private (0700, it holds the CA keys), so
that account must be let through: :func:`grant_broker_access` makes the fleet directory
traversable but not listable (0711) and gives the broker's own folder (``broker/``: its
config, ACL, server key, persistence) to that account. The CA and signing private keys stay
0600 and owned by root; the public CA certificates and the CRL are world-readable anyway.

:func:`set_broker_user` changes the ``user`` line of an existing fleet's mosquitto.conf
(``edgefleet init --broker-user NAME --fleet DIR`` on a fleet that exists).
"""

from __future__ import annotations

import os
import pwd
import re
from dataclasses import dataclass
from pathlib import Path

from edgefleet.host.errors import ProvisionError
from edgefleet.host.fleetdir import load_fleet_config
from edgefleet.shared.atomic import write_atomic

DEFAULT_BROKER_USER = "mosquitto"
_USER_LINE = re.compile(r"^(?:# )?user \S+.*$", re.MULTILINE)
_TRAVERSE = 0o011  # group and others may pass through a directory (not list it)
_NAME = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$", re.IGNORECASE)


@dataclass(frozen=True)
class BrokerAccess:
    """What :func:`grant_broker_access` did (or why it did nothing)."""

    user: str
    changed: tuple[str, ...]
    note: str
    blocked: tuple[str, ...] = ()

    def summary(self) -> str:
        """One line for the operator."""
        return self.note


def conf_user(conf_text: str) -> str:
    """The account a mosquitto.conf drops to when started as root."""
    for line in conf_text.splitlines():
        if line.startswith("user "):
            return line.split()[1]
    return DEFAULT_BROKER_USER


def grant_broker_access(fleet_dir: Path, user: str | None = None) -> BrokerAccess:
    """Let the broker account read what mosquitto.conf names (only when run as root).

    Args:
        fleet_dir: The fleet directory.
        user: The broker account; default: the ``user`` line of mosquitto.conf.

    Returns:
        What changed; nothing when not root (mosquitto then runs as the caller and reads
        the files as they are) or when the account is root.

    Raises:
        ProvisionError: The account does not exist on this machine.
    """
    config = load_fleet_config(fleet_dir)
    conf = config.resolve(config.broker_conf)
    user = user or conf_user(conf.read_text(encoding="utf-8"))
    if os.geteuid() != 0:
        return BrokerAccess(user, (), "not root: mosquitto runs as you and reads the files as is")
    try:
        account = pwd.getpwnam(user)
    except KeyError:
        raise ProvisionError(
            f"no account {user!r} on this machine for the broker: install mosquitto (its "
            "package creates the `mosquitto` user) or pass --broker-user NAME of an existing "
            "account"
        ) from None
    if account.pw_uid == 0:
        return BrokerAccess(user, (), "the broker runs as root: nothing to change")
    root = config.root
    folders = {root} | {
        config.resolve(r).parent
        for r in (config.ca_file, config.crl_file, config.host_ca_file)
        if r is not None
    }
    changed = [f"{d} traversable" for d in sorted(folders) if _traversable(d)]
    for path in (root / "broker", *sorted((root / "broker").rglob("*"))):
        if path.stat().st_uid != account.pw_uid:
            os.chown(path, account.pw_uid, account.pw_gid)
            changed.append(str(path))
    note = (
        f"broker files readable by {user!r}: {root}/broker owned by it, {root} traversable"
        if changed
        else f"broker files already readable by {user!r}"
    )
    blocked = [str(d) for d in root.parents if d.stat().st_mode & 0o001 == 0]
    if blocked:
        note += (
            f"; but {', '.join(blocked)} cannot be entered by {user!r}: move the fleet "
            f"directory (e.g. to /srv/edgefleet) or `chmod o+x {blocked[0]}`"
        )
    return BrokerAccess(user, tuple(changed), note, tuple(blocked))


def _traversable(folder: Path) -> bool:
    """Add search (x) permission for group and others; True if it was missing."""
    mode = folder.stat().st_mode
    if mode & _TRAVERSE == _TRAVERSE:
        return False
    folder.chmod((mode | _TRAVERSE) & 0o7777)
    return True


def set_broker_user(fleet_dir: Path, user: str) -> BrokerAccess:
    """Write ``user NAME`` into an existing fleet's mosquitto.conf, then grant it access.

    Raises:
        ProvisionError: No fleet there, or a malformed account name.
    """
    if not _NAME.match(user):
        raise ProvisionError(f"--broker-user {user!r} is not an account name")
    config = load_fleet_config(fleet_dir)
    conf = config.resolve(config.broker_conf)
    text = conf.read_text(encoding="utf-8")
    line = f"user {user}"
    new = _USER_LINE.sub(line, text, count=1) if _USER_LINE.search(text) else f"{line}\n{text}"
    if new != text:
        write_atomic(conf, new.encode(), mode=conf.stat().st_mode & 0o777)
    return grant_broker_access(fleet_dir, user)

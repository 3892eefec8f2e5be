"""Restart the fleet's Mosquitto so a revocation ends live sessions (``revoke --apply``).

Mosquitto 2.0 re-reads the CRL and ACL on SIGHUP, but the CRL is checked only in the TLS
handshake: a revoked device that is already connected keeps its session (and the ``%u``
patterns of the ACL still grant it its own topics). A restart makes every client handshake
again: the revoked certificate is refused, every other device reconnects by itself, and with
``persistence true`` Mosquitto saves retained messages and persistent sessions on SIGTERM and
loads them on start, so nothing else is lost. (Debian's 2.0.11 has the dynamic-security
plugin, which can kick a client, but it replaces the ACL file and certificate identities
with its own user database; the fleet's config does not use it.)

Two ways to restart:

- a systemd unit (the Debian package's ``mosquitto``): ``systemctl restart UNIT``;
- a process: its pid (or a pid file). The process is checked to be mosquitto, stopped with
  SIGTERM (it saves its database), and started again with the same command line and working
  directory, in a session of its own, its output appended to ``log_file``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from edgefleet.host.errors import ProvisionError
from edgefleet.host.fleetdir import load_fleet_config

STOP_TIMEOUT_S = 20.0
START_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Restarted:
    """How the broker was restarted."""

    how: str
    pid: int | None = None


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, exited but not yet reaped, counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def _command_of(pid: int) -> tuple[list[str], Path]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        cwd = Path(f"/proc/{pid}/cwd").readlink()
    except OSError as exc:
        raise ProvisionError(
            f"no running process {pid} to restart ({exc.strerror or exc}); check the pid "
            "(or pid file), or restart the broker yourself"
        ) from exc
    argv = [a.decode() for a in raw.split(b"\0") if a]
    if not argv or "mosquitto" not in Path(argv[0]).name:
        raise ProvisionError(
            f"process {pid} is {argv[:1] or 'unknown'}, not mosquitto: refusing to restart it"
        )
    return argv, cwd


def read_pidfile(path: Path) -> int:
    """The pid in a pid file, with a clear error."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError) as exc:
        raise ProvisionError(f"cannot read a pid from {path}: {exc}") from exc


def restart_process(
    pid: int,
    *,
    log_file: Path,
    pidfile: Path | None = None,
    wait_port: tuple[str, int] | None = None,
) -> Restarted:
    """Stop mosquitto ``pid`` with SIGTERM and start the same command line again.

    Args:
        pid: The running broker.
        log_file: Where the new process's stdout and stderr go (appended).
        pidfile: Rewritten with the new pid, if given.
        wait_port: (host, port) to wait for until the new broker accepts connections.

    Raises:
        ProvisionError: Not mosquitto, it would not stop, or the new one did not start.
    """
    argv, cwd = _command_of(pid)
    daemon = "-d" in argv or "--daemon" in argv
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while _alive(pid):
        if time.monotonic() > deadline:
            raise ProvisionError(
                f"mosquitto {pid} did not stop within {STOP_TIMEOUT_S:.0f} s of SIGTERM; "
                "stop it yourself and start it again"
            )
        time.sleep(0.05)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as log:
        # The old broker's own process: started again with its command line, on purpose.
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    new_pid = None if daemon else proc.pid
    if wait_port is not None and not _wait_port(*wait_port, proc=None if daemon else proc):
        raise ProvisionError(
            f"mosquitto did not accept connections on {wait_port[0]}:{wait_port[1]} within "
            f"{START_TIMEOUT_S:.0f} s of the restart; see {log_file}"
        )
    if pidfile is not None and new_pid is not None:
        pidfile.write_text(f"{new_pid}\n")
    return Restarted(how=f"restarted mosquitto ({' '.join(argv)})", pid=new_pid)


def _wait_port(host: str, port: int, *, proc: subprocess.Popen[bytes] | None) -> bool:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def restart_unit(unit: str) -> Restarted:
    """``systemctl restart UNIT``.

    Raises:
        ProvisionError: systemctl is missing or failed.
    """
    try:
        result = subprocess.run(
            ["systemctl", "restart", unit],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ProvisionError(f"cannot run systemctl restart {unit}: {exc}") from exc
    if result.returncode != 0:
        raise ProvisionError(
            f"systemctl restart {unit} failed ({result.returncode}): "
            f"{(result.stderr or result.stdout).strip()}"
        )
    return Restarted(how=f"systemctl restart {unit}")


def restart_broker(
    fleet_dir: Path,
    *,
    pid: int | None = None,
    pidfile: Path | None = None,
    systemd_unit: str | None = None,
) -> Restarted:
    """Restart the fleet's broker so every client handshakes again against the new CRL.

    Give exactly one of ``pid``, ``pidfile`` (a mosquitto started with ``mosquitto -c``)
    or ``systemd_unit`` (e.g. Debian's ``mosquitto``). See ``_restart`` for what survives.

    Raises:
        ProvisionError: None or several given, not mosquitto, or the restart failed.
    """
    config = load_fleet_config(fleet_dir)
    if sum(x is not None for x in (pid, pidfile, systemd_unit)) != 1:
        raise ProvisionError(
            "say which broker to restart: --broker-pid PID, --broker-pidfile FILE or "
            "--systemd-unit UNIT (Debian's package: --systemd-unit mosquitto)"
        )
    if systemd_unit is not None:
        return restart_unit(systemd_unit)
    if pidfile is not None:
        pid = read_pidfile(pidfile)
    assert pid is not None  # noqa: S101 - one of the three, checked above
    return restart_process(
        pid,
        log_file=config.resolve("broker/mosquitto.log"),
        pidfile=pidfile,
        wait_port=(config.broker.host, config.broker.port),
    )

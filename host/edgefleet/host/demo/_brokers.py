"""Brokers the demo starts on loopback: a local ``mosquitto`` process, or amqtt in-process.

Mosquitto is preferred: it speaks MQTT 5 and 3.1.1 and can run the fleet's own rendered
config (mutual TLS, ACL, CRL). amqtt (pure Python, asyncio) runs in a thread of this process
when no mosquitto is installed; it speaks MQTT 3.1.1 only, so every client must too.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import getpass
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Literal, Protocol

from amqtt.broker import Broker

from edgefleet.host.errors import BrokerError
from edgefleet.shared.broker_url import BrokerUrl

BrokerKind = Literal["auto", "mosquitto", "amqtt"]
_PR_SET_PDEATHSIG = 1


class LocalBroker(Protocol):
    """A broker this process started and must stop."""

    kind: str

    @property
    def url(self) -> str:
        """The URL clients connect to."""

    def stop(self) -> None:
        """Stop the broker (idempotent)."""


def _load_prctl() -> Any:  # noqa: ANN401 - a ctypes function
    # Resolved once, before any fork: the child between fork and exec must only make the call.
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()


def die_with_parent() -> None:
    """``preexec_fn`` for children: Linux sends them SIGTERM if this process dies (even SIGKILL).

    Children must be started from the main thread: the signal follows the forking thread.
    """
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)


def find_mosquitto() -> str | None:
    """The mosquitto binary (PATH, then Debian's /usr/sbin), or None."""
    for candidate in (
        shutil.which("mosquitto"),
        "/usr/sbin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def free_port() -> int:
    """A free TCP port on loopback (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, *, timeout: float = 10.0, alive: Any = None) -> bool:  # noqa: ANN401
    """Wait until something accepts TCP connections on 127.0.0.1:``port``.

    Args:
        port: The port.
        timeout: Seconds to wait.
        alive: Optional callable; waiting stops early when it returns False.

    Returns:
        True once the port accepts connections, False on timeout or when ``alive()`` is False.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            return False
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return True
        time.sleep(0.05)
    return False


def plain_mosquitto_conf(port: int, workdir: Path) -> str:
    """A loopback-only, anonymous, non-persistent mosquitto.conf for a throwaway broker."""
    lines = [
        f"listener {port} 127.0.0.1",
        "allow_anonymous true",
        # Run as root, mosquitto would switch to user "mosquitto"; stay who we are.
        f"user {getpass.getuser()}",
        "persistence false",
        "max_queued_messages 100000",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        f"# written by edgefleet demo into {workdir}",
    ]
    return "\n".join(lines) + "\n"


class MosquittoProcess:
    """A ``mosquitto -c CONF`` child process listening on a loopback port.

    Args:
        workdir: Where its config (if generated) and log go.
        port: The port; a free one if None.
        conf: An existing config (e.g. the fleet's TLS one) whose listener uses ``port``;
            None writes a plain anonymous loopback config.
    """

    kind = "mosquitto"

    def __init__(self, workdir: Path, *, port: int | None = None, conf: Path | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.conf = conf
        self.tls = conf is not None
        self.log_path = workdir / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The broker URL clients use."""
        return str(BrokerUrl("mqtts" if self.tls else "mqtt", "127.0.0.1", self.port))

    def start(self) -> MosquittoProcess:
        """Start it and wait until it listens.

        Raises:
            BrokerError: mosquitto is missing, exits, or does not listen within 10 s.
        """
        binary = find_mosquitto()
        if binary is None:
            raise BrokerError("mosquitto is not installed (sudo apt-get install mosquitto)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.conf
        if conf is None:
            conf = self.workdir / "mosquitto.conf"
            conf.write_text(plain_mosquitto_conf(self.port, self.workdir))
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [binary, "-c", str(conf)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=self.workdir,
                preexec_fn=die_with_parent,  # noqa: PLW1509 - only a prctl call, resolved earlier
            )
        proc = self.proc
        if not wait_for_port(self.port, alive=lambda: proc.poll() is None):
            self.stop()
            log_text = self.log_path.read_text(errors="replace")[-2000:]
            raise BrokerError(f"mosquitto did not start on port {self.port}; its log:\n{log_text}")
        return self

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class EmbeddedBroker:
    """amqtt in a daemon thread of this process, on its own asyncio loop (MQTT 3.1.1 only)."""

    kind = "amqtt"

    def __init__(self, *, port: int | None = None) -> None:
        self.port = port or free_port()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._broker: Any = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        """The broker URL clients use (plain MQTT 3.1.1)."""
        return str(BrokerUrl("mqtt", "127.0.0.1", self.port))

    def _config(self) -> dict[str, Any]:
        return {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            self._broker = Broker(self._config(), loop=loop)
            loop.run_until_complete(self._broker.start())
        except Exception as exc:  # noqa: BLE001 - handed to the starting thread
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        loop.run_forever()
        loop.close()

    def start(self) -> EmbeddedBroker:
        """Start the broker thread and wait until it listens.

        Raises:
            BrokerError: amqtt is missing or failed to start.
        """
        # amqtt logs every connection at INFO/WARNING; the demo has its own output.
        logging.getLogger("amqtt").setLevel(logging.ERROR)
        self._thread = threading.Thread(target=self._run, name="amqtt-broker", daemon=True)
        self._thread.start()
        if not self._ready.wait(15) or self._error is not None:
            raise BrokerError(f"the embedded amqtt broker did not start: {self._error}")
        return self

    def stop(self) -> None:
        """Shut the broker down and end its thread."""
        loop, self._loop = self._loop, None
        if loop is None or self._thread is None:
            return
        if self._broker is not None and loop.is_running():
            future = asyncio.run_coroutine_threadsafe(self._broker.shutdown(), loop)
            with contextlib.suppress(Exception):
                future.result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(timeout=10)


def start_local_broker(
    workdir: Path, *, kind: BrokerKind = "auto", port: int | None = None, conf: Path | None = None
) -> LocalBroker:
    """Start mosquitto (with ``conf`` if given) or, for ``kind="amqtt"`` or no mosquitto, amqtt.

    Raises:
        BrokerError: the requested broker cannot be started.
    """
    if kind == "mosquitto" or (kind == "auto" and find_mosquitto() is not None):
        return MosquittoProcess(workdir, port=port, conf=conf).start()
    return EmbeddedBroker(port=port).start()

"""A second, independent MQTT broker for tests: RabbitMQ with its MQTT plugin (Debian's package).

The fleet is tested against Mosquitto everywhere (tests/support/broker.py); this fixture runs
the same fleet flows against RabbitMQ 3.10 (Debian bookworm's ``rabbitmq-server``), an Erlang
implementation that shares no code with Mosquitto. Each broker is a throwaway node: its own
node name, Mnesia and log directories, config, enabled-plugins file, Erlang cookie (HOME),
epmd port and distribution port, all in a temp directory, so it never touches a system
RabbitMQ. The test owns every process: its own ``epmd`` (started first, in the foreground)
and the node itself, both stopped in :meth:`RabbitMQBroker.stop`.

Listeners, both on loopback:

* plain MQTT on :attr:`RabbitMQBroker.port`: anonymous clients, as the user ``guest``;
* with a :class:`TlsSetup`, also mutual-TLS MQTT on :attr:`RabbitMQBroker.tls_port`: the
  client certificate's CN is the user (``ssl_cert_login``); users and topic permissions come
  from a definitions file loaded at boot (no ``rabbitmqctl`` round trips); optionally a
  second TLS listener (:attr:`RabbitMQBroker.host_tls_port`) for host processes. One node
  serves them all, since each boot costs 5-25 s.

What RabbitMQ 3.10's MQTT plugin does differently from Mosquitto is listed in docs/fleet.md
("Brokers") and checked by tests/integration/test_second_broker.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from support.broker import free_port, wait_for_port

RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
# Erlang's epmd: Debian's erlang-base puts it under /usr/lib/erlang/erts-*/bin, with a
# /usr/bin/epmd link.
EPMD_CANDIDATES = ("/usr/bin/epmd", "/usr/lib/erlang/bin/epmd")
# A cold node boot took 14-35 s on a busy 2-core machine (measured); give it room.
START_TIMEOUT_S = 90.0


def find_rabbitmq() -> tuple[str, str]:
    """Return (rabbitmq-server, epmd) or raise with how to install them."""
    server = RABBITMQ_SERVER if Path(RABBITMQ_SERVER).is_file() else None
    server = server or shutil.which("rabbitmq-server")
    epmd = shutil.which("epmd") or next((p for p in EPMD_CANDIDATES if Path(p).is_file()), None)
    if server is None or epmd is None:
        msg = (
            "RabbitMQ is not installed: run `sudo apt-get install rabbitmq-server` "
            "(or `make tools`)"
        )
        raise RuntimeError(msg)
    return server, epmd


@dataclass(frozen=True)
class TlsSetup:
    """Mutual TLS on the MQTT listener and the users allowed in.

    Attributes:
        ca_file: CA bundle client certificates must chain to (PEM; may hold several CAs).
        cert_file: The broker's certificate.
        key_file: The broker's key.
        users: CN -> topic-permission regexes ``(write, read)`` on the ``amq.topic``
            exchange, in RabbitMQ's AMQP form (``/`` becomes ``.``; ``{username}`` is the
            connecting user).
    """

    ca_file: Path
    cert_file: Path
    key_file: Path
    users: dict[str, tuple[str, str]] = field(default_factory=dict)


class RabbitMQBroker:
    """One throwaway RabbitMQ node with the MQTT plugin, in ``workdir``."""

    kind = "rabbitmq"

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        tls: TlsSetup | None = None,
        tls_port: int | None = None,
        host_tls_port: int | None = None,
    ) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.tls = tls
        self.tls_port = tls_port or free_port()
        # a second TLS listener for host processes (same CAs: RabbitMQ has one ssl_options)
        self.host_tls_port = host_tls_port
        self.node = f"efx{self.port}@localhost"
        self.epmd_port = free_port()
        self.dist_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.epmd: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "rabbitmq.out"

    @property
    def url(self) -> str:
        """The plain listener."""
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def tls_url(self) -> str:
        """The mutual-TLS listener (with a :class:`TlsSetup`)."""
        return f"mqtts://localhost:{self.tls_port}"

    def _write_config(self) -> dict[str, str]:
        w = self.workdir
        for sub in ("mnesia", "log", "home"):
            (w / sub).mkdir(exist_ok=True)
        lines = [
            "listeners.tcp = none",  # no AMQP listener: MQTT only
            "log.console = true",
            "log.console.level = warning",
            "log.file = false",
            # a temp dir on a busy CI disk must not trip the default free-disk alarm
            "disk_free_limit.absolute = 1MB",
            "mqtt.retained_message_store = rabbit_mqtt_retained_msg_store_dets",
            "mqtt.subscription_ttl = 86400000",  # an offline session is kept 24 h
        ]
        lines += [
            f"mqtt.listeners.tcp.default = 127.0.0.1:{self.port}",
            "mqtt.allow_anonymous = true",
            "mqtt.default_user = guest",
            "mqtt.default_pass = guest",
        ]
        if self.tls is not None:
            defs = w / "definitions.json"
            defs.write_text(json.dumps(self._definitions()))
            lines += [
                f"mqtt.listeners.ssl.default = 127.0.0.1:{self.tls_port}",
                *(
                    [f"mqtt.listeners.ssl.host = 127.0.0.1:{self.host_tls_port}"]
                    if self.host_tls_port
                    else []
                ),
                "mqtt.ssl_cert_login = true",
                "ssl_cert_login_from = common_name",
                f"ssl_options.cacertfile = {self.tls.ca_file}",
                f"ssl_options.certfile = {self.tls.cert_file}",
                f"ssl_options.keyfile = {self.tls.key_file}",
                "ssl_options.verify = verify_peer",
                "ssl_options.fail_if_no_peer_cert = true",
                "ssl_options.versions.1 = tlsv1.2",
                f"load_definitions = {defs}",
            ]
        (w / "rabbitmq.conf").write_text("\n".join(lines) + "\n")
        # Not in 3.10's rabbitmq.conf schema: without it the MQTT plugin reads a user name
        # "a:b" (the host certificate's CN "edgefleet:host") as vhost "a", user "b".
        (w / "advanced.config").write_text(
            "[{rabbitmq_mqtt, [{ignore_colons_in_username, true}]}].\n"
        )
        (w / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        env = dict(os.environ)
        env.update(
            HOME=str(w / "home"),
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_MNESIA_BASE=str(w / "mnesia"),
            RABBITMQ_LOG_BASE=str(w / "log"),
            RABBITMQ_CONFIG_FILE=str(w / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(w / "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(w / "enabled_plugins"),
            RABBITMQ_PID_FILE=str(w / "rabbitmq.pid"),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            ERL_EPMD_PORT=str(self.epmd_port),
        )
        return env

    def _definitions(self) -> dict[str, object]:
        assert self.tls is not None
        users = self.tls.users
        # Definitions loaded at boot replace the default user: keep guest for the plain
        # listener. Certificate users get no password at all: only the CN counts.
        hashes = dict.fromkeys(users, "") | {"guest": _password_hash("guest")}
        return {
            "vhosts": [{"name": "/"}],
            "users": [
                {
                    "name": u,
                    "password_hash": h,
                    "hashing_algorithm": "rabbit_password_hashing_sha256",
                    "tags": ["administrator"] if u == "guest" else [],
                }
                for u, h in hashes.items()
            ],
            "permissions": [
                {"user": u, "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}
                for u in hashes
            ],
            "topic_permissions": [
                {"user": u, "vhost": "/", "exchange": "amq.topic", "write": w, "read": r}
                for u, (w, r) in users.items()
            ],
        }

    def start(self) -> RabbitMQBroker:
        server, epmd = find_rabbitmq()
        env = self._write_config()
        log = self.log_path.open("ab")
        if self.epmd is None or self.epmd.poll() is not None:
            # our own epmd in the foreground: the node would otherwise start a daemon one
            # that outlives the test
            self.epmd = subprocess.Popen(
                [epmd, "-port", str(self.epmd_port)], stdout=log, stderr=log, env=env
            )
        self.proc = subprocess.Popen(
            [server], stdout=log, stderr=log, env=env, cwd=self.workdir, start_new_session=True
        )
        log.close()
        try:
            wait_for_port(self.port, timeout=START_TIMEOUT_S)
            if self.tls is not None:
                wait_for_port(self.tls_port, timeout=START_TIMEOUT_S)
            if self.host_tls_port:
                wait_for_port(self.host_tls_port, timeout=START_TIMEOUT_S)
        except TimeoutError as exc:
            self.stop()
            msg = f"rabbitmq did not start; log:\n{self.log_path.read_text()[-4000:]}"
            raise RuntimeError(msg) from exc
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the node (SIGTERM: a clean shutdown; SIGKILL: a crash), then our epmd."""
        if self.proc is not None:
            if self.proc.poll() is None:
                # the node's process group: the start script, beam.smp and its port helpers
                os.killpg(self.proc.pid, sig)
                try:
                    self.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait()
            _reap_group(self.proc.pid)
            self.proc = None
        if self.epmd is not None:
            if self.epmd.poll() is None:
                self.epmd.terminate()
                self.epmd.wait(timeout=10)
            self.epmd = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()


def _password_hash(password: str) -> str:
    """RabbitMQ's rabbit_password_hashing_sha256: base64(salt + sha256(salt + password))."""
    salt = os.urandom(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def _reap_group(pgid: int) -> None:
    """SIGKILL whatever is left of the node's own process group (erl_child_setup, inet_gethost)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return

"""The host's MQTT connection: broker settings, TLS from the fleet config, a connect deadline.

Every host command talks to the broker through :class:`PahoConnection`: a paho-mqtt 2.x client
(``CallbackAPIVersion.VERSION2``) whose network loop runs in paho's thread and hands every
message to a thread-safe queue, so command code stays a plain loop over ``next_message``.
Fleet code takes the :class:`edgefleet.shared.connection.Connection` protocol instead, which
``PahoConnection`` satisfies and the unit tests' in-memory broker implements too.
Only standard MQTT is used (retained messages, QoS 1, persistent sessions and, where
offered, MQTT 5 shared subscriptions), so any 3.1.1 or 5 broker works.

A connection without an explicit client id gets :func:`random_client_id`
(``edgefleet.host.fleet._clientid``, docs/fleet.md "Client ids").
"""

from __future__ import annotations

import queue
import ssl
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edgefleet.host.errors import FleetError, UnsupportedProtocolError
from edgefleet.host.fleet._clientid import random_client_id
from edgefleet.shared.broker_url import BrokerUrl
from edgefleet.shared.connection import Message
from edgefleet.shared.errors import BrokerUrlError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from edgefleet.host.fleetdir import FleetConfig
    from edgefleet.shared.connection import PublishHandle

DEFAULT_CONNECT_TIMEOUT_S = 5.0
SESSION_EXPIRY_S = 7 * 24 * 3600
_UNSUPPORTED_PROTOCOL = (1, 132)  # 3.1.1 CONNACK rc / MQTT 5 reason code


@dataclass(frozen=True)
class BrokerSettings:
    """Where and how to connect: URL, TLS files, credentials, topic prefix.

    ``url`` is parsed into ``broker`` (``host``, ``port`` and ``tls`` are its parts) and then
    kept in its canonical form without the password, so error messages can show it; a user
    name and password in the URL are used unless ``username`` is given.

    Raises:
        FleetError: ``url`` is not a broker URL.
    """

    url: str
    prefix: str = "edgefleet"
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    broker: BrokerUrl = field(init=False, repr=False)
    host: str = field(init=False)
    port: int = field(init=False)
    tls: bool = field(init=False)

    def __post_init__(self) -> None:
        try:
            broker = BrokerUrl.parse(self.url)
        except BrokerUrlError as exc:
            raise FleetError(str(exc)) from exc
        object.__setattr__(self, "broker", broker)
        object.__setattr__(self, "url", str(broker))
        object.__setattr__(self, "host", broker.host)
        object.__setattr__(self, "port", broker.port)
        object.__setattr__(self, "tls", broker.tls)
        if self.username is None and broker.username is not None:
            object.__setattr__(self, "username", broker.username)
            object.__setattr__(self, "password", broker.password)


def settings_from(
    *, broker: str | None, fleet: FleetConfig | None, prefix: str | None = None
) -> BrokerSettings:
    """Combine ``--broker``/``--prefix`` options with the fleet config (options win).

    Raises:
        FleetError: Neither a broker URL nor a fleet config was given.
    """
    if fleet is None:
        if broker is None:
            raise FleetError(
                "no broker: pass --broker mqtt://HOST:PORT or --fleet DIR (a fleet made by "
                "`edgefleet init`), or set EDGEFLEET_BROKER"
            )
        return BrokerSettings(url=broker, prefix=prefix or "edgefleet")
    # The host-only listener if the fleet has one (docs/provisioning.md, client ids).
    settings = BrokerSettings(url=broker or fleet.host_url)
    ca, cert, key = fleet.tls_files() if settings.tls else (None, None, None)
    return replace(
        settings,
        prefix=prefix or fleet.prefix,
        ca_file=ca,
        cert_file=cert if cert is not None and cert.exists() else None,
        key_file=key if key is not None and key.exists() else None,
    )


class PahoConnection:
    """A connected paho client whose messages arrive on a queue (see the module docstring).

    It satisfies the :class:`edgefleet.shared.connection.Connection` protocol.

    Use :func:`connect` to make one; close it with :meth:`close` or a ``with`` block.
    """

    def __init__(self, client: mqtt.Client, settings: BrokerSettings, protocol: int) -> None:
        self.client = client
        self.settings = settings
        self.protocol = protocol
        self.messages: queue.Queue[Message] = queue.Queue()
        self.disconnected = threading.Event()
        self.filters: dict[str, int] = {}
        self.resubscribes = 0  # subscriptions renewed after a reconnect
        # (unix time, reason) of each loss of an established connection; None once back.
        self.losses: list[tuple[float, str]] = []
        self.down_since: float | None = None
        self.closing = False
        client.on_message = self._on_message

    def lost(self) -> str | None:
        """In words, if the established connection dropped (and whether it came back)."""
        if not self.losses:
            return None
        at, reason = self.losses[0]
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))
        text = f"lost the connection to the broker at {self.url} at {when} ({reason})"
        if self.down_since is not None:
            return (
                f"{text}; still not reconnected after {time.time() - self.down_since:.0f} s: "
                "device reports since then were not seen. Check that the broker is running, "
                "then see where each device stands with `edgefleet rollout status`"
            )
        return f"{text}; reconnected {len(self.losses)} time(s), reports may have been missed"

    @property
    def mqtt5(self) -> bool:
        """True if the session speaks MQTT 5."""
        return self.protocol == MQTTProtocolVersion.MQTTv5

    @property
    def url(self) -> str:
        """The broker URL, for messages to the user."""
        return self.settings.url

    def _on_reconnect(
        self,
        client: mqtt.Client,
        _u: object,
        _flags: mqtt.ConnectFlags,
        rc: ReasonCode,
        _p: Properties | None,
    ) -> None:
        # paho reconnects by itself. Subscribe again on every accepted (re)connect, whatever
        # session-present says: a broker may restore a session without some of its
        # subscriptions (mosquitto 2.0.11 drops $share ones from its persistence file), and a
        # repeated SUBSCRIBE of the same filter only replaces the existing one.
        if _code(rc) == 0:
            self.down_since = None
        if _code(rc) == 0 and self.filters:
            client.subscribe(list(self.filters.items()))
            self.resubscribes += 1

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        self.messages.put(Message(msg.topic, bytes(msg.payload), bool(msg.retain), time.time()))

    def subscribe(self, *filters: str, qos: int = 1, timeout: float = 10.0) -> None:
        """Subscribe and wait for the SUBACK, so retained messages follow reliably.

        Raises:
            FleetError: The broker refused or did not answer.
        """
        done = threading.Event()
        granted: list[ReasonCode] = []

        def on_subscribe(
            _c: mqtt.Client, _u: object, _mid: int, codes: list[ReasonCode], _p: Properties | None
        ) -> None:
            granted.extend(codes)
            done.set()

        self.client.on_subscribe = on_subscribe
        self.filters.update(dict.fromkeys(filters, qos))
        rc, _mid = self.client.subscribe([(f, qos) for f in filters])
        if rc != mqtt.MQTT_ERR_SUCCESS or not done.wait(timeout):
            raise FleetError(f"subscribing to {list(filters)} failed: {mqtt.error_string(rc)}")
        refused = [f for f, code in zip(filters, granted, strict=False) if _code(code) >= 0x80]  # noqa: PLR2004
        if refused:
            raise FleetError(
                f"the broker refused the subscription to {refused}: check the ACL grants "
                "this client those topics"
            )

    def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> mqtt.MQTTMessageInfo:
        """Queue a publish; call :meth:`wait_published` (or ``info.wait_for_publish``) to confirm.

        Raises:
            FleetError: The client is not connected.
        """
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_QUEUE_SIZE):
            raise FleetError(f"publishing to {topic} failed: {mqtt.error_string(info.rc)}")
        return info

    def wait_published(self, handles: Sequence[PublishHandle], *, timeout: float = 60.0) -> None:
        """Block until the broker acknowledged every QoS 1 publish in ``handles``.

        Raises:
            FleetError: Not all were acknowledged within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        for info in handles:
            remaining = deadline - time.monotonic()
            try:
                info.wait_for_publish(timeout=max(0.0, remaining))
            except (RuntimeError, ValueError) as exc:
                raise FleetError(f"publish failed: {exc}; is the broker still up?") from exc
            if not info.is_published():
                n = len(handles)
                raise FleetError(
                    f"the broker did not acknowledge {n} publishes within {timeout:.0f} s"
                )

    def next_message(self, timeout: float) -> Message | None:
        """The next received message, or None after ``timeout`` seconds."""
        try:
            return self.messages.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None

    def drain_retained(self, *, quiet_s: float = 0.3, max_s: float = 5.0) -> list[Message]:
        """Collect messages until none arrived for ``quiet_s`` (retained state after subscribe)."""
        out: list[Message] = []
        deadline = time.monotonic() + max_s
        while time.monotonic() < deadline:
            msg = self.next_message(min(quiet_s, deadline - time.monotonic()))
            if msg is None:
                break
            out.append(msg)
        return out

    def close(self) -> None:
        """Disconnect cleanly and stop the network thread."""
        self.closing = True
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> PahoConnection:  # noqa: PYI034 - a final class
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _code(code: ReasonCode | int) -> int:
    # paho's VERSION2 callbacks give ReasonCode for MQTT 5 and 3.1.1 alike; int for safety.
    return code.value if isinstance(code, ReasonCode) else int(code)


def connect(
    settings: BrokerSettings,
    *,
    client_id: str | None = None,
    persistent: bool = False,
    timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
    protocol: str = "auto",
) -> PahoConnection:
    """Connect to the broker, or fail with a clear FleetError within about ``timeout`` seconds.

    Args:
        settings: Broker URL, TLS files, credentials.
        client_id: MQTT client id; :func:`random_client_id` if None.
        persistent: Keep the session (subscriptions, queued QoS 1 messages) across reconnects.
        timeout: Seconds for TCP connect plus CONNACK.
        protocol: ``"5"``, ``"3.1.1"`` or ``"auto"`` (MQTT 5, falling back to 3.1.1 when the
            broker refuses the protocol version).

    Raises:
        FleetError: Unreachable, TLS failure, refused (bad credentials, not authorised).
    """
    cid = client_id or random_client_id()
    versions = {"5": [MQTTProtocolVersion.MQTTv5], "3.1.1": [MQTTProtocolVersion.MQTTv311]}
    attempts = versions.get(protocol, [MQTTProtocolVersion.MQTTv5, MQTTProtocolVersion.MQTTv311])
    for attempt, version in enumerate(attempts):
        try:
            return _connect_once(settings, cid, version, persistent=persistent, timeout=timeout)
        except UnsupportedProtocolError:
            if attempt == len(attempts) - 1:
                raise FleetError(
                    f"the broker at {settings.url} refused MQTT protocol version {protocol}"
                ) from None
    raise AssertionError  # pragma: no cover - the loop returns or raises


def _make_client(
    settings: BrokerSettings, cid: str, version: MQTTProtocolVersion, *, persistent: bool
) -> mqtt.Client:
    clean = None if version == MQTTProtocolVersion.MQTTv5 else not persistent
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=cid,
        clean_session=clean,
        protocol=version,
        reconnect_on_failure=True,
    )
    client.max_queued_messages_set(0)
    client.max_inflight_messages_set(100)
    if settings.username is not None:
        client.username_pw_set(settings.username, settings.password)
    if settings.tls:
        _set_tls(client, settings)
    return client


def _set_tls(client: mqtt.Client, settings: BrokerSettings) -> None:
    for what, path in (
        ("CA", settings.ca_file),
        ("certificate", settings.cert_file),
        ("key", settings.key_file),
    ):
        if path is not None and not path.is_file():
            raise FleetError(f"TLS {what} file {path} does not exist; check the fleet config")
    try:
        client.tls_set(
            ca_certs=str(settings.ca_file) if settings.ca_file else None,
            certfile=str(settings.cert_file) if settings.cert_file else None,
            keyfile=str(settings.key_file) if settings.key_file else None,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise FleetError(f"cannot set up TLS for {settings.url}: {exc}") from exc


def _connect_once(
    settings: BrokerSettings,
    cid: str,
    version: MQTTProtocolVersion,
    *,
    persistent: bool,
    timeout: float,
) -> PahoConnection:
    client = _make_client(settings, cid, version, persistent=persistent)
    conn = PahoConnection(client, settings, version)
    result: dict[str, ReasonCode] = {}
    connected = threading.Event()

    def on_connect(
        _c: mqtt.Client, _u: object, _f: mqtt.ConnectFlags, rc: ReasonCode, _p: Properties | None
    ) -> None:
        result["rc"] = rc
        connected.set()

    def on_disconnect(
        _c: mqtt.Client,
        _u: object,
        _f: mqtt.DisconnectFlags,
        rc: ReasonCode,
        _p: Properties | None,
    ) -> None:
        result.setdefault("disconnect", rc)
        if "rc" in result and not conn.closing:
            now = time.time()
            conn.losses.append((now, str(rc)))
            conn.down_since = now
        conn.disconnected.set()
        connected.set()

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.connect_timeout = timeout
    _tcp_connect(client, settings, version, persistent=persistent, timeout=timeout)
    client.loop_start()
    if not connected.wait(timeout) or "rc" not in result:
        client.loop_stop()
        if "disconnect" in result and version == MQTTProtocolVersion.MQTTv5:
            # A 3.1.1-only broker may close the connection on an MQTT 5 CONNECT instead of
            # answering CONNACK rc 1 (RabbitMQ 3.10 does): try 3.1.1 before giving up.
            raise UnsupportedProtocolError
        raise FleetError(
            f"cannot reach broker at {settings.url}: no MQTT answer within {timeout:.0f} s; "
            "check that the port speaks MQTT (mqtts:// for a TLS listener) and the broker is up"
        )
    _check_connack(conn, result["rc"])
    client.on_connect = conn._on_reconnect  # noqa: SLF001 - wiring our own object
    return conn


def _tcp_connect(
    client: mqtt.Client,
    settings: BrokerSettings,
    version: MQTTProtocolVersion,
    *,
    persistent: bool,
    timeout: float,
) -> None:
    properties = None
    clean_start: mqtt.CleanStartOption = mqtt.MQTT_CLEAN_START_FIRST_ONLY
    if version == MQTTProtocolVersion.MQTTv5:
        # paho's Properties.__init__ carries no annotations; --strict would call it untyped.
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = SESSION_EXPIRY_S if persistent else 0
        clean_start = not persistent
    try:
        client.connect(
            settings.host,
            settings.port,
            keepalive=30,
            clean_start=clean_start,
            properties=properties,
        )
    except ssl.SSLError as exc:
        raise FleetError(
            f"TLS handshake with {settings.url} failed: {exc}; check ca_file/cert_file/key_file "
            "in the fleet config and that the broker's certificate names this host"
        ) from exc
    except TimeoutError as exc:
        raise FleetError(
            f"cannot reach broker at {settings.url}: no TCP answer within {timeout:.0f} s; "
            "check the host name, port and firewall"
        ) from exc
    except OSError as exc:
        raise FleetError(
            f"cannot reach broker at {settings.url}: {exc.strerror or exc}; check that the "
            "broker runs and the URL (host, port, mqtt:// vs mqtts://) is right"
        ) from exc


def _check_connack(conn: PahoConnection, rc: ReasonCode) -> PahoConnection:
    code = _code(rc)
    if code == 0:
        return conn
    conn.client.loop_stop()
    conn.client.disconnect()
    if code in _UNSUPPORTED_PROTOCOL and conn.protocol == MQTTProtocolVersion.MQTTv5:
        raise UnsupportedProtocolError
    hint = "check the user name/password or client certificate, and the broker's ACL"
    raise FleetError(f"the broker at {conn.settings.url} refused the connection: {rc}; {hint}")

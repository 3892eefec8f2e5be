"""The agent's broker link: the paho MQTT client, its callbacks and the network thread.

:func:`make_client` sets up the paho client (protocol, last will, credentials, TLS and the
write hook that keeps all socket I/O on one thread). :class:`MqttLink` owns that client:
its callbacks turn broker messages and (re)connects into events on the agent's queue, and
:meth:`MqttLink.network_loop` runs ``client.loop()`` and reconnects with jittered, capped
backoff. Other threads only queue packets (publish, subscribe), never touch the socket.
"""

from __future__ import annotations

import logging
import random
import ssl
import threading
import time
from typing import TYPE_CHECKING

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgefleet.device.reachability import Reachability
from edgefleet.shared.errors import TopicError
from edgefleet.shared.messages import MAX_MESSAGE_BYTES, Status, encode
from edgefleet.shared.topics import Topics

if TYPE_CHECKING:
    from paho.mqtt.client import ConnectFlags, DisconnectFlags, MQTTMessage, SocketLike
    from paho.mqtt.reasoncodes import ReasonCode

    from edgefleet.device.bounded import EventQueue
    from edgefleet.device.config import AgentConfig

log = logging.getLogger(__name__)

CONNECTED = "_connected"  # internal event: the broker accepted a (re)connect
_POLL_S = 0.02  # how often the shutdown waits look again


def backoff_delay(attempt: int, cap: float) -> float:
    """Jittered, capped reconnect delay: uniform(0, 1.5 ** min(10, attempt)), at most cap."""
    return min(cap, random.uniform(0, 1.5 ** min(10, attempt)))  # noqa: S311 - jitter


def _keep_writes_on_the_loop_thread(_c: mqtt.Client, _u: object, _sock: SocketLike) -> None:
    """Paho's write hook: a no-op whose presence keeps publish() off the socket.

    paho 2.2 ``_packet_queue`` (behind publish/subscribe/unsubscribe/disconnect) appends the
    packet to ``_out_packet``, wakes ``select`` through its socket pair and then, when no
    ``loop_start`` thread and no ``on_socket_register_write`` hook exist, calls
    ``loop_write()`` itself: on the *calling* thread, concurrently with our network thread
    in ``loop()`` - two threads on one SSL socket. With this hook set it only calls the
    hook; the woken ``loop()`` writes the queued packet on the network thread.
    """


def make_client(config: AgentConfig) -> mqtt.Client:
    """The agent's paho client: protocol, last will, credentials, TLS; not connected.

    All socket I/O happens in ``client.loop()`` on one thread (see
    :func:`_keep_writes_on_the_loop_thread`); publish() from other threads only queues.
    """
    cfg = config.mqtt
    v5 = cfg.protocol == "5"
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=config.device_id,
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        # 3.1.1 has no session expiry: a persistent session keeps QoS 1 messages
        # (acks, chunks) queued while the device is offline.
        clean_session=None if v5 else False,
    )
    client.max_queued_messages_set(0)
    offline = Status(device_id=config.device_id, online=False)
    topics = Topics(cfg.prefix)
    client.will_set(topics.status(config.device_id), encode(offline), 1, retain=True)
    if cfg.username is not None:
        client.username_pw_set(cfg.username, cfg.password)
    if cfg.tls:
        client.tls_set(
            ca_certs=str(cfg.ca_file) if cfg.ca_file else None,
            certfile=str(cfg.cert_file) if cfg.cert_file else None,
            keyfile=str(cfg.key_file) if cfg.key_file else None,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
    client.on_socket_register_write = _keep_writes_on_the_loop_thread
    return client


class MqttLink:
    """The agent's one broker connection (see the module docstring).

    Broker messages go to ``events`` (offered: a full queue drops and counts them by kind,
    so the network thread never blocks); each accepted (re)connect puts :data:`CONNECTED`.
    ``connected`` is set while the broker session is up.
    """

    def __init__(self, config: AgentConfig, events: EventQueue, stopping: threading.Event) -> None:
        self.config = config.mqtt
        # MQTT 5: the broker does not deliver larger packets to this client at all (a huge
        # image message never reaches memory); 64 KiB over the largest message for topic
        # and properties; never below the protocol's messages and chunks (1 MiB).
        self.max_packet = max(config.limits.max_image_message_bytes, MAX_MESSAGE_BYTES) + 2**16
        self.topics = Topics(config.mqtt.prefix)
        self.events = events
        self.stopping = stopping
        self.connected = threading.Event()
        self.reach = Reachability(config.mqtt.url)  # outages said at warning level, bounded
        self.client = make_client(config)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    # -- paho callbacks (on the network thread) -----------------------------------------

    def _on_connect(
        self,
        _c: mqtt.Client,
        _u: object,
        _f: ConnectFlags,
        reason: ReasonCode,
        _p: Properties | None,
    ) -> None:
        if reason.is_failure:
            log.warning("broker refused the connection: %s", reason)
            return
        self.reach.connected()
        self.connected.set()
        self.events.put(CONNECTED)

    def _on_disconnect(
        self,
        _c: mqtt.Client,
        _u: object,
        _f: DisconnectFlags,
        reason: ReasonCode,
        _p: Properties | None,
    ) -> None:
        self.connected.clear()
        log.info("disconnected from the broker: %s", reason)
        if reason.is_failure and not self.stopping.is_set():
            self.reach.lost(str(reason))

    def _on_message(self, _c: mqtt.Client, _u: object, msg: MQTTMessage) -> None:
        # Never block the network thread: a full queue drops and counts by kind.
        try:
            kind = self.topics.parse(msg.topic).kind
        except TopicError:
            kind = "other"
        self.events.offer(msg.topic, bytes(msg.payload), kind=kind)

    # -- the network thread -------------------------------------------------------------

    def _connect_properties(self) -> Properties:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.config.session_expiry_s
        props.MaximumPacketSize = self.max_packet
        return props

    def _connect(self) -> None:
        cfg = self.config
        if cfg.protocol == "5":
            self.client.connect(
                cfg.host,
                cfg.port,
                cfg.keepalive_s,
                clean_start=False,
                properties=self._connect_properties(),
            )
        else:  # clean_session=False was given to the Client
            self.client.connect(cfg.host, cfg.port, cfg.keepalive_s)

    def network_loop(self) -> None:
        """Connect, run ``client.loop()`` and reconnect with backoff until ``stopping``."""
        cap = self.config.reconnect_max_s
        attempt, first, sock_open = 0, True, False
        while not self.stopping.is_set():
            if not sock_open:
                try:
                    if first:
                        self._connect()
                    else:
                        self.client.reconnect()
                    first, sock_open = False, True
                except (OSError, ssl.SSLError, ValueError) as exc:
                    delay = backoff_delay(attempt, cap)
                    attempt += 1
                    self.reach.failed(str(exc), delay)
                    self.stopping.wait(delay)
                    continue
            if self.client.loop(timeout=0.2) != mqtt.MQTT_ERR_SUCCESS:
                sock_open = False
                self.stopping.wait(backoff_delay(attempt, cap))
                attempt += 1
            elif self.connected.is_set():
                attempt = 0

    # -- queued from the main thread ----------------------------------------------------

    def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> mqtt.MQTTMessageInfo:
        """Queue a publish; the network thread sends it (and again after a reconnect)."""
        return self.client.publish(topic, payload, qos, retain=retain)

    def subscribe(self, topic_filter: str, *, qos: int = 1) -> None:
        """Queue a subscribe (not waited for: the SUBACK arrives on the network thread)."""
        self.client.subscribe(topic_filter, qos=qos)

    def unsubscribe(self, topic_filter: str) -> None:
        """Queue an unsubscribe."""
        self.client.unsubscribe(topic_filter)

    def wait_published(self, infos: list[mqtt.MQTTMessageInfo], *, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the broker to acknowledge ``infos``; True if it did."""
        deadline = time.monotonic() + timeout
        while not all(i.is_published() for i in infos) and time.monotonic() < deadline:
            time.sleep(_POLL_S)
        return all(i.is_published() for i in infos)

    def disconnect(self, *, timeout: float) -> None:
        """Queue a DISCONNECT and wait up to ``timeout`` s for the network thread to send it.

        Stopping the network thread before it wrote the DISCONNECT would make the broker
        see a lost connection (and publish the last will).
        """
        self.client.disconnect()
        deadline = time.monotonic() + timeout
        while self.connected.is_set() and time.monotonic() < deadline:
            time.sleep(_POLL_S)

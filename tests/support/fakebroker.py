"""An in-memory MQTT broker whose clients implement the ``Connection`` protocol, for unit tests.

It models what fleet logic relies on, by the MQTT rules: retained messages (an empty retained
payload clears the topic), ``+``/``#`` wildcards (``topic_matches``), QoS 1 messages queued
for a persistent (``clean_session=False``) client while it is away and redelivered when it
reconnects, shared subscriptions ``$share/GROUP/FILTER`` (each message to one member), and a
last will published when a client drops. Publishes complete at once.

Delivery is synchronous: a publish has reached every subscriber when it returns. A client
either queues messages for ``next_message`` (the host's way) or, with ``on_message`` set, has
them handed to that callback at once, which lets a simulated device answer a manifest while
the host is still inside its publish. So in a single-threaded test nothing can arrive while
``next_message`` waits, and it waits at most ``FakeBroker.max_wait_s`` (0.01 s) on an empty
queue instead of its full timeout; pass ``max_wait_s=None`` when another thread publishes.

A QoS 1 message counts as acknowledged when the client takes it; messages still queued when
a persistent client goes away are delivered again on its return (real brokers redeliver
unacknowledged in-flight messages the same way). A resumed session's messages arrive when
the client first acts (subscribe, publish, next_message), as they arrive after paho's
network loop starts, so an ``on_message`` callback can already use the client.

Not modelled: QoS 2, message expiry, topic aliases, ACLs, the network.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from edgefleet.shared.connection import SHARE_PREFIX, Message, PublishHandle, topic_matches

OnMessage = Callable[[Message], None]


@dataclass(frozen=True)
class Published:
    """One publish as the broker saw it (for assertions on what a client sent)."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    sender: str


class Done:
    """A publish handle that is complete at once (the fake broker has no network)."""

    def wait_for_publish(self, timeout: float | None = None) -> None:
        """Return at once: the publish already reached every subscriber."""

    def is_published(self) -> bool:
        """Always True."""
        return True


@dataclass
class _Session:
    client_id: str
    persistent: bool
    subs: dict[str, int] = field(default_factory=dict)
    pending: list[tuple[Message, int]] = field(default_factory=list)
    client: FakeClient | None = None


class FakeBroker:
    """The broker: sessions, retained messages and a log of every publish."""

    def __init__(self, *, max_wait_s: float | None = 0.01) -> None:
        """An empty broker; ``max_wait_s``: see the module docstring."""
        self.max_wait_s = max_wait_s
        self.retained: dict[str, bytes] = {}
        self.log: list[Published] = []
        self._sessions: dict[str, _Session] = {}
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self._turn = itertools.count()

    def connect(
        self,
        client_id: str | None = None,
        *,
        clean_session: bool = True,
        mqtt5: bool = True,
        will: tuple[str, bytes, bool] | None = None,
        on_message: OnMessage | None = None,
    ) -> FakeClient:
        """A connected client; a persistent session resumes its subscriptions and queue.

        Args:
            client_id: The MQTT client id; a fresh one if None. A second connect with an
                id already online takes the session over, as a real broker does.
            clean_session: False keeps subscriptions and QoS 1 messages across disconnects.
            mqtt5: What the client's ``mqtt5`` property says.
            will: (topic, payload, retain) published when the client drops (not on close).
            on_message: Hand each message to this callback instead of the queue.
        """
        cid = client_id or f"fake-{next(self._ids)}"
        with self._lock:
            session = self._sessions.get(cid)
            if session is not None and session.client is not None:
                session.client.close()
            if session is None or clean_session or not session.persistent:
                session = _Session(cid, persistent=not clean_session)
                self._sessions[cid] = session
            client = FakeClient(self, session, mqtt5=mqtt5, will=will, on_message=on_message)
            session.client = client
            client.backlog, session.pending = session.pending, []
        return client

    def published(self, topic_filter: str = "#") -> list[Published]:
        """Every publish so far whose topic matches ``topic_filter``, oldest first."""
        return [p for p in self.log if topic_matches(topic_filter, p.topic)]

    def subscribe(self, session: _Session, filters: Sequence[str], qos: int) -> None:
        """Add subscriptions; send the retained messages of non-shared filters."""
        for f in filters:
            topic_matches(f, "x")  # raises ValueError for an invalid filter
        with self._lock:
            for f in filters:
                session.subs[f] = qos
                if f.startswith(SHARE_PREFIX):
                    continue  # MQTT 5 4.8.2: no retained messages for shared subscriptions
                for topic, payload in sorted(self.retained.items()):
                    if topic_matches(f, topic):
                        self._deliver(
                            session,
                            Message(topic, payload, retain=True, received_at=time.time()),
                            qos,
                        )

    def publish(self, sender: str, topic: str, payload: bytes, qos: int, *, retain: bool) -> None:
        """Route one publish to every matching subscription (one member per shared group)."""
        if not topic or "+" in topic or "#" in topic:
            raise ValueError(f"cannot publish to {topic!r}: a topic name holds no wildcard")
        with self._lock:
            self.log.append(Published(topic, bytes(payload), qos, retain, sender))
            if retain and payload:
                self.retained[topic] = bytes(payload)
            elif retain:
                self.retained.pop(topic, None)
            msg = Message(topic, bytes(payload), retain=False, received_at=time.time())
            groups: dict[str, list[tuple[_Session, int]]] = {}
            for session in list(self._sessions.values()):
                own = [q for f, q in session.subs.items() if _plain_match(f, topic)]
                if own:
                    self._deliver(session, msg, min(qos, max(own)))
                for f, q in session.subs.items():
                    if f.startswith(SHARE_PREFIX) and topic_matches(f, topic):
                        groups.setdefault(f, []).append((session, q))
            for members in groups.values():
                session, q = self._pick(members)
                self._deliver(session, msg, min(qos, q))

    def disconnected(self, session: _Session, unacked: list[tuple[Message, int]]) -> None:
        """A client left: keep a persistent session's unacknowledged QoS 1 messages."""
        with self._lock:
            session.client = None
            if session.persistent:
                session.pending[:0] = [(m, q) for m, q in unacked if q > 0]
            elif self._sessions.get(session.client_id) is session:
                del self._sessions[session.client_id]

    def _pick(self, members: list[tuple[_Session, int]]) -> tuple[_Session, int]:
        # Online members take turns; a message for a group with nobody online waits in a
        # persistent member's session, as mosquitto does.
        online = [m for m in members if m[0].client is not None] or members
        return online[next(self._turn) % len(online)]

    @staticmethod
    def _deliver(session: _Session, msg: Message, qos: int) -> None:
        if session.client is not None:
            session.client.receive(msg, qos)
        elif session.persistent and qos > 0:
            session.pending.append((msg, qos))


def _plain_match(topic_filter: str, topic: str) -> bool:
    return not topic_filter.startswith(SHARE_PREFIX) and topic_matches(topic_filter, topic)


class FakeClient:
    """One connected client; implements ``edgefleet.shared.connection.Connection``."""

    url = "fake://in-memory"

    def __init__(
        self,
        broker: FakeBroker,
        session: _Session,
        *,
        mqtt5: bool,
        will: tuple[str, bytes, bool] | None,
        on_message: OnMessage | None,
    ) -> None:
        """Use :meth:`FakeBroker.connect`."""
        self.broker = broker
        self.session = session
        self.will = will
        self.on_message = on_message
        self.closed = False
        self._mqtt5 = mqtt5
        self._queue: deque[tuple[Message, int]] = deque()
        self._ready = threading.Condition()
        self.backlog: list[tuple[Message, int]] = []  # a resumed session's queued messages

    @property
    def client_id(self) -> str:
        """The MQTT client id."""
        return self.session.client_id

    @property
    def mqtt5(self) -> bool:
        """As given to :meth:`FakeBroker.connect`."""
        return self._mqtt5

    def receive(self, msg: Message, qos: int) -> None:
        """The broker delivers one message (to ``on_message`` or the queue)."""
        if self.on_message is not None:
            self.on_message(msg)
            return
        with self._ready:
            self._queue.append((msg, qos))
            self._ready.notify_all()

    def subscribe(self, *filters: str, qos: int = 1, timeout: float = 10.0) -> None:  # noqa: ARG002
        """Subscribe; matching retained messages are delivered before this returns.

        Raises:
            ValueError: An invalid filter.
            RuntimeError: The client is closed.
        """
        self._check_open()
        self.broker.subscribe(self.session, filters, qos)
        self._flush()

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> Done:
        """Publish; every subscriber has it when this returns.

        Raises:
            ValueError: A topic with a wildcard.
            RuntimeError: The client is closed.
        """
        self._check_open()
        self._flush()
        self.broker.publish(self.client_id, topic, payload, qos, retain=retain)
        return Done()

    def wait_published(self, handles: Sequence[PublishHandle], *, timeout: float = 60.0) -> None:
        """Check every handle completed (they all have: see :class:`Done`)."""
        for handle in handles:
            handle.wait_for_publish(timeout)
            if not handle.is_published():
                raise AssertionError(f"publish handle {handle!r} did not complete")

    def next_message(self, timeout: float) -> Message | None:
        """The next queued message, waiting up to ``timeout`` s (capped by ``max_wait_s``)."""
        self._flush()
        limit = self.broker.max_wait_s
        wait = timeout if limit is None else min(timeout, limit)
        with self._ready:
            if not self._queue and wait > 0:
                self._ready.wait_for(lambda: bool(self._queue), wait)
            return self._queue.popleft()[0] if self._queue else None

    def drain_retained(self, *, quiet_s: float = 0.3, max_s: float = 5.0) -> list[Message]:  # noqa: ARG002
        """Everything queued now: delivery is synchronous, so the retained state is here."""
        self._flush()
        with self._ready:
            out = [m for m, _ in self._queue]
            self._queue.clear()
        return out

    def close(self) -> None:
        """Disconnect cleanly: no last will; a persistent session keeps what was not taken."""
        self._leave()

    def drop(self) -> None:
        """Disconnect abruptly (network loss, crash): the broker publishes the last will."""
        if self._leave() and self.will is not None:
            topic, payload, retain = self.will
            self.broker.publish(self.client_id, topic, payload, 1, retain=retain)

    def _leave(self) -> bool:
        if self.closed:
            return False
        self.closed = True
        with self._ready:
            unacked = [*self.backlog, *self._queue]
            self._queue.clear()
            self.backlog = []
        self.broker.disconnected(self.session, unacked)
        return True

    def _flush(self) -> None:
        backlog, self.backlog = self.backlog, []
        for msg, qos in backlog:
            self.receive(msg, qos)

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError(f"fake client {self.client_id} is closed: connect a new one")

"""The seam at the MQTT connection: what fleet code needs from a broker client, and topic matching.

Fleet logic (push, rollout, ingest, status) is written against :class:`Connection`, a
:class:`typing.Protocol`, so it runs the same over a real paho-mqtt client (the host's
``PahoConnection``) and over the in-memory fake broker of the unit tests. This module is pure
typing plus :func:`topic_matches`: it imports no MQTT library.

A connection hands every received message to a queue read with :meth:`Connection.next_message`,
so command code stays a plain loop; publishes return a :class:`PublishHandle` that
:meth:`Connection.wait_published` waits on (QoS 1: until the broker acknowledged it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Protocol

SHARE_PREFIX: Final = "$share/"


@dataclass(frozen=True)
class Message:
    """One received message, copied out of the client's network thread.

    Attributes:
        topic: The topic it was published to (never a filter).
        payload: The payload bytes; empty for a cleared retained message.
        retain: True if the broker delivered it from its retained store (state on subscribe).
        received_at: ``time.time()`` when the client received it.
    """

    topic: str
    payload: bytes
    retain: bool
    received_at: float


class PublishHandle(Protocol):
    """What :meth:`Connection.publish` returns; paho's ``MQTTMessageInfo`` is one."""

    def wait_for_publish(self, timeout: float | None = None) -> None:
        """Block until the publish completed (QoS 1: acknowledged) or ``timeout`` passed."""

    def is_published(self) -> bool:
        """True once the publish completed."""


class Connection(Protocol):
    """A connected MQTT client as fleet code uses it (see the module docstring).

    Implementations raise their package's error (``FleetError`` on the host) with a message
    saying what failed and what to check.
    """

    @property
    def mqtt5(self) -> bool:
        """True if the session speaks MQTT 5 (shared subscriptions, session expiry)."""

    @property
    def url(self) -> str:
        """The broker URL, for messages to the user."""

    def subscribe(self, *filters: str, qos: int = 1, timeout: float = 10.0) -> None:
        """Subscribe to ``filters`` and wait for the broker's answer (SUBACK).

        Retained messages matching the filters follow on :meth:`next_message`.
        """

    def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> PublishHandle:
        """Queue one publish; an empty retained payload clears the topic's retained message."""

    def wait_published(self, handles: Sequence[PublishHandle], *, timeout: float = 60.0) -> None:
        """Block until every publish in ``handles`` completed, or fail after ``timeout`` s."""

    def next_message(self, timeout: float) -> Message | None:
        """The next received message, or None after ``timeout`` seconds."""

    def drain_retained(self, *, quiet_s: float = 0.3, max_s: float = 5.0) -> list[Message]:
        """Collect messages until none arrived for ``quiet_s`` (retained state after subscribe)."""

    def close(self) -> None:
        """Disconnect cleanly."""


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether ``topic`` matches ``topic_filter`` by the MQTT rules (3.1.1 section 4.7, 5.0 4.7).

    ``+`` matches exactly one level (possibly empty), ``#`` as the last level matches the parent
    and any number of levels below it. A filter starting with a wildcard does not match a
    topic starting with ``$`` (``$SYS/...``). A shared subscription's ``$share/GROUP/`` prefix
    is stripped first: the rest is matched as an ordinary filter.

    Raises:
        ValueError: ``topic_filter`` is not a valid filter (``#`` not alone as the last level,
            ``+`` sharing a level, empty, or a ``$share`` without group and filter) or ``topic``
            is not a valid topic name (empty, or containing a wildcard).
    """
    pattern = _filter_levels(topic_filter)
    if not topic or "+" in topic or "#" in topic:
        raise ValueError(f"{topic!r} is not an MQTT topic name (empty, or holds + or #)")
    levels = topic.split("/")
    if topic.startswith("$") and pattern[0] in {"+", "#"}:
        return False
    for i, want in enumerate(pattern):
        if want == "#":
            return True
        if i >= len(levels) or (want not in {"+", levels[i]}):
            return False
    return len(levels) == len(pattern)


def _filter_levels(topic_filter: str) -> list[str]:
    """The levels of a valid filter, with any ``$share/GROUP/`` prefix removed."""
    text = topic_filter
    if text.startswith(SHARE_PREFIX):
        _, group, rest = [*text.split("/", 2), "", ""][:3]
        if not group or "+" in group or "#" in group or not rest:
            raise ValueError(
                f"{topic_filter!r} is not a shared subscription: write $share/GROUP/FILTER"
            )
        text = rest
    if not text:
        raise ValueError("an MQTT topic filter must not be empty")
    levels = text.split("/")
    for i, level in enumerate(levels):
        bad_hash = "#" in level and (level != "#" or i != len(levels) - 1)
        if bad_hash or ("+" in level and level != "+"):
            raise ValueError(
                f"{topic_filter!r} is not a valid MQTT topic filter: + must fill a whole level "
                "and # must be the whole last level"
            )
    return levels

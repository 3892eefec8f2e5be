"""What the update state machine asks its driver to do on the network.

The :class:`~edgefleet.device.updater.Updater` never touches MQTT: each event it is fed
returns a list of these actions, which the agent carries out on its connection.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Publish:
    """Publish ``payload`` on ``topic``."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


@dataclass(frozen=True)
class Subscribe:
    """Subscribe to ``topic_filter`` at QoS 1."""

    topic_filter: str


@dataclass(frozen=True)
class Unsubscribe:
    """Unsubscribe from ``topic_filter``."""

    topic_filter: str


Action = Publish | Subscribe | Unsubscribe

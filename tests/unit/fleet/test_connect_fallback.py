"""The host's MQTT 5 -> 3.1.1 fallback against a broker that drops an MQTT 5 CONNECT unanswered.

RabbitMQ 3.10's MQTT plugin (measured, tests/integration/test_second_broker.py) closes the
connection on an MQTT 5 CONNECT instead of answering CONNACK return code 1. A loopback
server here does exactly that, so the fallback is checked without a RabbitMQ node.
"""

from __future__ import annotations

import socket
import threading

import pytest

from edgefleet.host.errors import FleetError
from edgefleet.host.fleet import BrokerSettings, connect

CONNACK_ACCEPTED = bytes([0x20, 0x02, 0x00, 0x00])
PROTOCOL_LEVEL_OFFSET = 8  # fixed header (2 bytes, short packets) + "\x00\x04MQTT"


class OnlyMqtt311:
    """Accepts TCP; answers a 3.1.1 CONNECT, closes any other (or every one, if ``deaf``)."""

    def __init__(self, *, deaf: bool = False) -> None:
        self.deaf = deaf
        self.levels: list[int] = []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.keep: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            data = client.recv(1024)
            level = data[PROTOCOL_LEVEL_OFFSET] if len(data) > PROTOCOL_LEVEL_OFFSET else -1
            self.levels.append(level)
            if level == 4 and not self.deaf:  # MQTT 3.1.1 is protocol level 4
                client.sendall(CONNACK_ACCEPTED)
                self.keep.append(client)
            else:
                client.close()

    def close(self) -> None:
        self.server.close()
        for client in self.keep:
            client.close()


def test_auto_falls_back_to_311_when_the_broker_drops_the_mqtt5_connect():
    broker = OnlyMqtt311()
    try:
        conn = connect(BrokerSettings(url=f"mqtt://127.0.0.1:{broker.port}"), timeout=3)
        try:
            assert not conn.mqtt5
        finally:
            conn.close()
    finally:
        broker.close()
    assert broker.levels == [5, 4]  # tried MQTT 5 first, then 3.1.1


def test_asking_for_mqtt5_only_does_not_fall_back():
    broker = OnlyMqtt311()
    try:
        url = f"mqtt://127.0.0.1:{broker.port}"
        with pytest.raises(FleetError, match="refused MQTT protocol version 5"):
            connect(BrokerSettings(url=url), timeout=3, protocol="5")
    finally:
        broker.close()
    assert broker.levels == [5]


def test_a_broker_that_drops_every_connect_is_still_a_clear_error():
    broker = OnlyMqtt311(deaf=True)
    try:
        url = f"mqtt://127.0.0.1:{broker.port}"
        with pytest.raises(FleetError, match="no MQTT answer"):
            connect(BrokerSettings(url=url), timeout=3)
    finally:
        broker.close()
    assert broker.levels == [5, 4]

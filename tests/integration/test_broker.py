"""The test broker really moves messages, retained ones included."""

from __future__ import annotations

import threading

import paho.mqtt.client as mqtt
import pytest

pytestmark = pytest.mark.integration


def _client(port: int) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


def test_publish_and_receive_through_mosquitto(broker, prefix):
    got: list[bytes] = []
    done = threading.Event()
    sub = _client(broker.port)

    def on_message(_c, _u, msg):
        got.append(msg.payload)
        done.set()

    sub.on_message = on_message
    sub.subscribe(f"{prefix}/hello", qos=1)
    pub = _client(broker.port)
    # A retained message arrives even though the subscription may race the publish.
    pub.publish(f"{prefix}/hello", b"\x00payload\xff", qos=1, retain=True).wait_for_publish(5)
    assert done.wait(5)
    assert got == [b"\x00payload\xff"]
    for c in (sub, pub):
        c.loop_stop()
        c.disconnect()


def test_killed_broker_comes_back_with_retained_state(own_broker, prefix):
    pub = _client(own_broker.port)
    pub.publish(f"{prefix}/kept", b"v1", qos=1, retain=True).wait_for_publish(5)
    pub.loop_stop()
    pub.disconnect()
    own_broker.stop()  # SIGTERM saves the persistence file
    own_broker.start()
    got = threading.Event()
    sub = _client(own_broker.port)
    sub.on_message = lambda _c, _u, msg: got.set() if msg.payload == b"v1" else None
    sub.subscribe(f"{prefix}/kept", qos=1)
    assert got.wait(5)
    sub.loop_stop()
    sub.disconnect()

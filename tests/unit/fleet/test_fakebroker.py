"""The in-memory broker behaves like MQTT where fleet logic relies on it."""

from __future__ import annotations

import threading
import time

import pytest

from edgefleet.shared.connection import Connection
from support.fakebroker import FakeBroker, FakeClient


def topics_of(client: FakeClient) -> list[tuple[str, bytes, bool]]:
    out = []
    while (msg := client.next_message(0)) is not None:
        out.append((msg.topic, msg.payload, msg.retain))
    return out


def test_a_fake_client_is_a_connection(broker):
    conn: Connection = broker.connect(mqtt5=False)
    assert not conn.mqtt5
    assert conn.url.startswith("fake://")
    handle = conn.publish("a/b", b"x")
    conn.wait_published([handle])
    assert handle.is_published()


def test_retained_message_reaches_a_late_subscriber_and_an_empty_one_clears_it(broker):
    pub = broker.connect()
    pub.publish("fleet/devices/a/status", b"on", retain=True)
    pub.publish("fleet/devices/b/status", b"on", retain=True)
    pub.publish("fleet/devices/b/status", b"", retain=True)
    late = broker.connect()
    late.subscribe("fleet/devices/+/status")
    assert topics_of(late) == [("fleet/devices/a/status", b"on", True)]
    assert broker.retained == {"fleet/devices/a/status": b"on"}


def test_live_messages_are_not_flagged_retained_and_the_clear_is_delivered(broker):
    sub = broker.connect()
    sub.subscribe("fleet/#")
    pub = broker.connect()
    pub.publish("fleet/x", b"1", retain=True)
    pub.publish("fleet/x", b"", retain=True)
    pub.publish("other/x", b"2")
    assert topics_of(sub) == [("fleet/x", b"1", False), ("fleet/x", b"", False)]


def test_wildcards_follow_the_mqtt_rules(broker):
    sub = broker.connect()
    sub.subscribe("p/devices/+/predictions", "$SYS/#")
    pub = broker.connect()
    for topic in ("p/devices/a/predictions", "p/devices/a/predictions/ack", "p/x", "$SYS/up"):
        pub.publish(topic, b".")
    assert [t for t, _, _ in topics_of(sub)] == ["p/devices/a/predictions", "$SYS/up"]


def test_overlapping_subscriptions_deliver_once(broker):
    sub = broker.connect()
    sub.subscribe("a/#", "a/+")
    broker.connect().publish("a/b", b".")
    assert len(topics_of(sub)) == 1


def test_invalid_filter_and_topic_are_refused(broker):
    client = broker.connect()
    with pytest.raises(ValueError, match="filter"):
        client.subscribe("a/#/b")
    with pytest.raises(ValueError, match="wildcard"):
        client.publish("a/+", b".")


def test_qos1_messages_wait_for_a_persistent_client_and_qos0_do_not(broker):
    worker = broker.connect("ingest", clean_session=False)
    worker.subscribe("p/#")
    worker.close()
    pub = broker.connect()
    pub.publish("p/1", b"a")
    pub.publish("p/2", b"b", qos=0)
    again = broker.connect("ingest", clean_session=False)
    assert topics_of(again) == [("p/1", b"a", False)]
    pub.publish("p/3", b"c")  # the session kept the subscription
    assert topics_of(again) == [("p/3", b"c", False)]


def test_messages_not_taken_before_a_drop_are_delivered_again(broker):
    worker = broker.connect("ingest", clean_session=False)
    worker.subscribe("p/#")
    pub = broker.connect()
    pub.publish("p/1", b"a")
    pub.publish("p/2", b"b")
    assert worker.next_message(0).topic == "p/1"  # taken: acknowledged
    worker.drop()
    again = broker.connect("ingest", clean_session=False)
    assert topics_of(again) == [("p/2", b"b", False)]


def test_a_clean_session_forgets_subscriptions_and_queued_messages(broker):
    worker = broker.connect("ingest", clean_session=False)
    worker.subscribe("p/#")
    worker.close()
    broker.connect().publish("p/1", b"a")
    fresh = broker.connect("ingest", clean_session=True)
    broker.connect().publish("p/2", b"b")
    assert topics_of(fresh) == []


def test_a_second_connect_with_the_same_id_takes_the_session_over(broker):
    first = broker.connect("d", clean_session=False)
    first.subscribe("p/#")
    second = broker.connect("d", clean_session=False)
    broker.connect().publish("p/1", b"a")
    assert first.closed
    assert topics_of(second) == [("p/1", b"a", False)]
    with pytest.raises(RuntimeError, match="closed"):
        first.publish("p/2", b".")


def test_shared_subscription_gives_each_message_to_one_member(broker):
    workers = [broker.connect() for _ in range(2)]
    for w in workers:
        w.subscribe("$share/g/p/+/predictions")
    plain = broker.connect()
    plain.subscribe("p/+/predictions")
    pub = broker.connect()
    for i in range(6):
        pub.publish(f"p/d{i}/predictions", b".")
    got = [topics_of(w) for w in workers]
    assert sorted(t for g in got for t, _, _ in g) == [f"p/d{i}/predictions" for i in range(6)]
    assert all(got)  # both members took a share
    assert len(topics_of(plain)) == 6  # an ordinary subscriber still sees everything


def test_shared_subscription_gets_no_retained_messages(broker):
    broker.connect().publish("p/a", b"r", retain=True)
    worker = broker.connect()
    worker.subscribe("$share/g/p/#")
    assert topics_of(worker) == []


def test_shared_group_with_nobody_online_queues_for_a_persistent_member(broker):
    worker = broker.connect("w1", clean_session=False)
    worker.subscribe("$share/g/p/#")
    worker.drop()
    broker.connect().publish("p/a", b"1")
    assert topics_of(broker.connect("w1", clean_session=False)) == [("p/a", b"1", False)]


def test_last_will_on_drop_but_not_on_close(broker):
    watcher = broker.connect()
    watcher.subscribe("s/#")
    broker.connect(will=("s/a", b"offline", True)).close()
    broker.connect(will=("s/b", b"offline", True)).drop()
    assert topics_of(watcher) == [("s/b", b"offline", False)]
    assert broker.retained == {"s/b": b"offline"}


def test_on_message_callback_answers_inside_the_publish(broker):
    host = broker.connect()
    host.subscribe("reply")
    device = broker.connect(on_message=lambda m: device.publish("reply", m.payload.upper()))
    device.subscribe("ask")
    host.publish("ask", b"hi")
    assert topics_of(host) == [("reply", b"HI", False)]


def test_next_message_waits_for_another_threads_publish():
    broker = FakeBroker(max_wait_s=None)
    sub = broker.connect()
    sub.subscribe("t")
    timer = threading.Timer(0.05, broker.connect().publish, args=("t", b"late"))
    timer.start()
    msg = sub.next_message(5.0)
    timer.join()
    assert msg is not None
    assert msg.payload == b"late"
    assert sub.next_message(0.01) is None


def test_the_publish_log_filters_by_topic(broker):
    client = broker.connect("host")
    client.publish("a/1", b"x", retain=True)
    client.publish("b/1", b"y", qos=0)
    [entry] = broker.published("a/#")
    assert (entry.topic, entry.payload, entry.qos, entry.retain, entry.sender) == (
        "a/1",
        b"x",
        1,
        True,
        "host",
    )


def test_next_message_on_an_empty_queue_returns_soon_unless_told_to_wait(broker):
    sub = broker.connect()
    started = time.monotonic()
    assert sub.next_message(5.0) is None
    assert time.monotonic() - started < 1.0


def test_a_resumed_sessions_messages_arrive_once_the_client_acts(broker):
    got = []
    worker = broker.connect("w", clean_session=False)
    worker.subscribe("p/#")
    worker.close()
    broker.connect().publish("p/1", b"a")
    again = broker.connect("w", clean_session=False, on_message=got.append)
    assert got == []
    again.subscribe("q")
    assert [m.topic for m in got] == ["p/1"]

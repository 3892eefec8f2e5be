"""MQTT topic matching against the examples of the MQTT 5.0 spec, section 4.7."""

from __future__ import annotations

import dataclasses

import pytest

from edgefleet.shared.connection import Message, topic_matches


@pytest.mark.parametrize(
    ("topic_filter", "topic"),
    [
        # 4.7.1.2 multi-level wildcard: the parent and any number of child levels
        ("sport/tennis/player1/#", "sport/tennis/player1"),
        ("sport/tennis/player1/#", "sport/tennis/player1/ranking"),
        ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon"),
        ("sport/#", "sport"),
        ("#", "sport/tennis/player1"),
        ("#", "/"),
        # 4.7.1.3 single-level wildcard: exactly one level, which may be empty
        ("sport/tennis/+", "sport/tennis/player1"),
        ("sport/tennis/+", "sport/tennis/player2"),
        ("sport/+", "sport/"),
        ("+/+", "/finance"),
        ("/+", "/finance"),
        ("+/tennis/#", "sport/tennis/player1/ranking"),
        ("sport/+/player1", "sport/tennis/player1"),
        ("+", "sport"),
        # 4.7.2 topics beginning with $: only filters naming $ explicitly
        ("$SYS/#", "$SYS/monitor/Clients"),
        ("$SYS/monitor/+", "$SYS/monitor/Clients"),
        # exact match, and a shared subscription matches as its inner filter
        ("edgefleet/devices/pi-01/status", "edgefleet/devices/pi-01/status"),
        ("$share/edgefleet/edgefleet/devices/+/predictions", "edgefleet/devices/a/predictions"),
        ("$share/g/#", "anything/at/all"),
    ],
)
def test_filter_matches(topic_filter, topic):
    assert topic_matches(topic_filter, topic)


@pytest.mark.parametrize(
    ("topic_filter", "topic"),
    [
        ("sport/tennis/+", "sport/tennis/player1/ranking"),
        ("sport/tennis/+", "sport/tennis"),
        ("sport/+", "sport"),
        ("+", "/finance"),
        ("sport/tennis/player1/#", "sport/tennis"),
        ("sport/tennis/player1/#", "sport/tennis/player2"),
        ("#", "$SYS/monitor/Clients"),
        ("+/monitor/Clients", "$SYS/monitor/Clients"),
        ("$share/g/+/x", "$SYS/x"),
        # topic levels are case sensitive, and a level is never partly matched
        ("ACCOUNTS", "Accounts"),
        ("sport/tennis", "sport/tennis/"),
        ("sport", "sport/"),
        ("$share/edgefleet/a/+/predictions", "a/b/predictions/ack"),
    ],
)
def test_filter_does_not_match(topic_filter, topic):
    assert not topic_matches(topic_filter, topic)


@pytest.mark.parametrize(
    "topic_filter",
    [
        "sport/tennis#",
        "sport/tennis/#/ranking",
        "sport+",
        "sport/+tennis",
        "##",
        "",
        "$share/g",
        "$share//sport",
        "$share/g+/sport",
        "$share/g/",
    ],
)
def test_invalid_filter_is_refused(topic_filter):
    with pytest.raises(ValueError, match=r"filter|shared subscription"):
        topic_matches(topic_filter, "sport/tennis")


@pytest.mark.parametrize("topic", ["", "sport/+", "sport/#"])
def test_invalid_topic_name_is_refused(topic):
    with pytest.raises(ValueError, match="not an MQTT topic name"):
        topic_matches("#", topic)


def test_message_is_an_immutable_value():
    msg = Message("a/b", b"x", retain=True, received_at=1.0)
    assert msg == Message("a/b", b"x", retain=True, received_at=1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        msg.payload = b"y"  # type: ignore[misc]

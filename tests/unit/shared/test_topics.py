"""Topic building and parsing."""

from __future__ import annotations

import pytest

from edgefleet.shared.errors import TopicError
from edgefleet.shared.topics import ParsedTopic, Topics, validate_id

SHA = "ab" * 32


@pytest.fixture
def t() -> Topics:
    return Topics("acme/prod")


def test_device_topics_are_under_prefix(t):
    assert t.status("pi-01") == "acme/prod/devices/pi-01/status"
    assert t.reported("pi-01") == "acme/prod/devices/pi-01/reported"
    assert t.desired_device("pi-01") == "acme/prod/devices/pi-01/desired"
    assert t.chunk_request("pi-01") == "acme/prod/devices/pi-01/chunk-requests"
    assert t.predictions("pi-01") == "acme/prod/devices/pi-01/predictions"
    assert t.predictions_ack("pi-01") == "acme/prod/devices/pi-01/predictions/ack"
    assert t.images("pi-01") == "acme/prod/devices/pi-01/images"


def test_group_model_and_wildcard_topics(t):
    assert t.desired_group("field") == "acme/prod/groups/field/desired"
    assert t.chunk(SHA, 7) == f"acme/prod/models/{SHA}/chunks/7"
    assert t.chunks_filter(SHA) == f"acme/prod/models/{SHA}/chunks/+"
    assert t.all_status() == "acme/prod/devices/+/status"
    assert t.all_reported() == "acme/prod/devices/+/reported"
    assert t.all_predictions() == "acme/prod/devices/+/predictions"
    assert t.all_chunk_requests() == "acme/prod/devices/+/chunk-requests"
    assert t.shared(t.all_predictions()) == "$share/edgefleet/acme/prod/devices/+/predictions"


def test_parse_round_trips_every_builder(t):
    cases = {
        t.status("d1"): ParsedTopic("status", device_id="d1"),
        t.reported("d1"): ParsedTopic("reported", device_id="d1"),
        t.desired_device("d1"): ParsedTopic("desired_device", device_id="d1"),
        t.desired_group("g"): ParsedTopic("desired_group", group="g"),
        t.chunk(SHA, 0): ParsedTopic("chunk", sha256=SHA, index=0),
        t.chunk_request("d1"): ParsedTopic("chunk_request", device_id="d1"),
        t.predictions("d1"): ParsedTopic("predictions", device_id="d1"),
        t.predictions_ack("d1"): ParsedTopic("predictions_ack", device_id="d1"),
        t.images("d1"): ParsedTopic("images", device_id="d1"),
    }
    for topic, expected in cases.items():
        assert t.parse(topic) == expected


@pytest.mark.parametrize("bad", ["", "a+b", "a#", "a/b", "x" * 65, "sp ace", "é", "$SYS"])
def test_invalid_ids_are_rejected_everywhere(t, bad):
    with pytest.raises(TopicError):
        validate_id(bad)
    with pytest.raises(TopicError):
        t.status(bad)
    with pytest.raises(TopicError):
        t.desired_group(bad)


@pytest.mark.parametrize("bad", ["", "a//b", "/a", "a/", "a/+", "#", "$SYS"])
def test_invalid_prefixes_are_rejected(bad):
    with pytest.raises(TopicError):
        Topics(bad)


@pytest.mark.parametrize(
    "topic",
    [
        "other/devices/d1/status",
        "acme/prod/devices/d1/unknown",
        "acme/prod/devices//status",
        "acme/prod/devices/+/status",
        "acme/prod/devices/d1/predictions/ack/x",
        "acme/prod/groups/g/other",
        f"acme/prod/models/{SHA}/chunks/01",
        f"acme/prod/models/{SHA}/chunks/-1",
        f"acme/prod/models/{SHA}/chunks/4294967296",
        "acme/prod/models/ABC/chunks/1",
        "acme/prod",
        "acme",
    ],
)
def test_parse_rejects_foreign_topics(t, topic):
    with pytest.raises(TopicError):
        t.parse(topic)


def test_chunk_index_and_sha_are_validated(t):
    with pytest.raises(TopicError):
        t.chunk(SHA.upper(), 1)
    with pytest.raises(TopicError):
        t.chunk(SHA, -1)
    with pytest.raises(TopicError):
        t.chunk(SHA, 2**32)

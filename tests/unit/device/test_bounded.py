"""Bounded collections for network-grown state: the event queue and the seen-hash LRU."""

import queue

import pytest

from edgefleet.device.bounded import EventQueue, RecentSet


def test_a_full_event_queue_drops_and_counts_broker_messages_by_kind():
    q = EventQueue(max_events=3)
    assert all(q.offer("t/ack", b"a", kind="predictions_ack") for _ in range(3))
    assert not q.offer("t/ack", b"a", kind="predictions_ack")
    assert not q.offer("t/chunk", b"c", kind="chunk")
    assert q.dropped == {"predictions_ack": 1, "chunk": 1}
    q.put("_connected")  # internal events are never dropped
    assert [q.get(timeout=0)[0] for _ in range(4)] == ["t/ack"] * 3 + ["_connected"]
    assert q.offer("t/ack", b"a", kind="predictions_ack")  # room again
    q.get(timeout=0)
    with pytest.raises(queue.Empty):
        q.get(timeout=0)


def test_the_event_queue_is_bounded_in_bytes_too():
    q = EventQueue(max_events=100, max_bytes=10)
    assert q.offer("t/i", b"x" * 6, kind="images")
    assert not q.offer("t/i", b"x" * 6, kind="images")
    q.get(timeout=0)
    assert q.offer("t/i", b"x" * 6, kind="images")


def test_recent_set_keeps_the_most_recently_used():
    s = RecentSet(limit=3)
    for item in "abc":
        s.add(item)
    assert "a" in s  # a is now the most recent
    s.add("d")
    assert "b" not in s
    assert all(x in s for x in "acd")
    assert len(s) == 3
    s.discard("a")
    assert "a" not in s

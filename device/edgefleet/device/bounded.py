"""Bounded in-memory collections for what the network can grow: the event queue, seen hashes."""

from __future__ import annotations

import logging
import queue
import threading
from collections import Counter, OrderedDict

log = logging.getLogger(__name__)

Event = tuple[str, bytes]


class EventQueue:
    """The main loop's inbox: bounded for broker messages, never blocking the network thread.

    A broker message that finds the queue full (``max_events`` or ``max_bytes`` of payload)
    is dropped and counted by kind: acks are harmless to lose (the record is re-sent after
    ``resend_after_s`` and acked again), chunks are asked for again, retained manifests come
    back on the next reconnect. Internal events (connected, health check done) always go in.
    """

    def __init__(self, *, max_events: int = 10_000, max_bytes: int = 64 * 2**20) -> None:
        self._queue: queue.Queue[Event] = queue.Queue()
        self._lock = threading.Lock()
        self._bytes = 0
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.dropped: Counter[str] = Counter()

    def offer(self, topic: str, payload: bytes, *, kind: str) -> bool:
        """Queue a broker message, or drop and count it when full; True if queued."""
        with self._lock:
            full = self._queue.qsize() >= self.max_events
            if full or self._bytes + len(payload) > self.max_bytes:
                self.dropped[kind] += 1
                count = self.dropped[kind]
            else:
                self._bytes += len(payload)
                self._queue.put((topic, payload))
                return True
        if count & (count - 1) == 0:  # 1, 2, 4, 8...: visible, without flooding the log
            log.warning("event queue full: dropped %d %s message(s) so far", count, kind)
        return False

    def put(self, topic: str, payload: bytes = b"") -> None:
        """Queue an internal event (never dropped; there are few)."""
        self._queue.put((topic, payload))

    def get(self, timeout: float) -> Event:
        """The next event; raises ``queue.Empty`` after ``timeout`` seconds."""
        event = self._queue.get(timeout=timeout)
        with self._lock:
            self._bytes = max(0, self._bytes - len(event[1]))
        return event

    def empty(self) -> bool:
        """True if nothing is waiting."""
        return self._queue.empty()


class RecentSet:
    """A set that keeps only the ``limit`` most recently added or looked-up items (LRU)."""

    def __init__(self, limit: int = 256) -> None:
        self._items: OrderedDict[str, None] = OrderedDict()
        self.limit = limit

    def __contains__(self, item: object) -> bool:
        if item in self._items:
            self._items.move_to_end(str(item))
            return True
        return False

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: str) -> None:
        """Remember ``item``, forgetting the least recently used beyond the limit."""
        self._items[item] = None
        self._items.move_to_end(item)
        while len(self._items) > self.limit:
            self._items.popitem(last=False)

    def discard(self, item: str) -> None:
        """Forget ``item`` if present."""
        self._items.pop(item, None)

"""Publish the agent's log lines to ``{p}/devices/{id}/logs`` (docs/agent.md, "Device logs").

:class:`LogPublisher` is a ``logging.Handler`` on the root logger. Its ``emit`` never
blocks and never touches the network: it formats the line, cuts it to
``max_line_bytes``, takes a token from a bucket (``per_minute``, at most ``burst`` at
once) and appends it to a bounded queue; a line over the rate or beyond the queue is
dropped and counted, and the next line published says how many were dropped before it.

A daemon thread takes lines from the queue and publishes them (QoS 0, not retained) while
the broker session is up; offline, the newest ``queue`` lines wait. Nothing it does can
come back into the handler: lines from that thread, from this module and from paho are
never published, a line logged while the handler is already in ``emit`` on the same
thread is ignored, and a publish error is counted, not logged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Literal

from edgefleet.shared.messages import DeviceLog, encode

if TYPE_CHECKING:
    from edgefleet.device._inflight import Publisher
    from edgefleet.device.config import LogsConfig

_IGNORED = ("paho", __name__)
_CUT = " [cut]"


class LogPublisher(logging.Handler):
    """The handler and its publishing thread (see the module docstring)."""

    def __init__(
        self, config: LogsConfig, *, device_id: str, boot_id: str, topic: str, link: Publisher
    ) -> None:
        super().__init__(level=config.level.upper())
        self.config = config
        self.device_id = device_id
        self.boot_id = boot_id
        self.topic = topic
        self.link = link
        self.setFormatter(logging.Formatter("%(message)s"))
        self._queue: deque[tuple[logging.LogRecord, str, int, int]] = deque()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._inside = threading.local()
        self._tokens = float(config.burst)
        self._refilled = time.monotonic()
        self._seq = 0
        self._dropped_since = 0  # dropped since the last line queued
        self.sent = 0
        self.dropped_total = 0
        self._thread: threading.Thread | None = None

    # -- the handler (any thread; called with the handler's lock held) -------------------

    def emit(self, record: logging.LogRecord) -> None:
        """Queue one line, or drop and count it; never blocks, never raises."""
        if getattr(self._inside, "busy", False) or record.name.startswith(_IGNORED):
            return
        self._inside.busy = True
        try:
            if not self._take_token():
                self._drop()
                return
            if len(self._queue) >= self.config.queue:
                self._queue.popleft()
                self._drop()
            self._seq += 1
            self._queue.append((record, self._line(record), self._seq, self._dropped_since))
            self._dropped_since = 0
            self._wake.set()
        except Exception:  # noqa: BLE001 - a log line must never break the agent
            self._drop()
        finally:
            self._inside.busy = False

    def _drop(self) -> None:
        self._seq += 1  # a gap in seq shows where lines went missing
        self._dropped_since += 1
        self.dropped_total += 1

    def _take_token(self) -> bool:
        now = time.monotonic()
        rate = self.config.per_minute / 60.0
        self._tokens = min(float(self.config.burst), self._tokens + (now - self._refilled) * rate)
        self._refilled = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def _line(self, record: logging.LogRecord) -> str:
        text = self.format(record)
        limit = self.config.max_line_bytes
        data = text.encode("utf-8", "replace")
        if len(data) <= limit:
            return text
        return data[: limit - len(_CUT)].decode("utf-8", "ignore") + _CUT

    # -- the publishing thread ----------------------------------------------------------

    def start(self) -> None:
        """Attach to the root logger and start the publishing thread."""
        self._thread = threading.Thread(target=self._run, name="device-logs", daemon=True)
        self._thread.start()
        logging.getLogger().addHandler(self)

    def stop(self) -> None:
        """Detach from the root logger and stop the thread (queued lines are dropped)."""
        logging.getLogger().removeHandler(self)
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)

    def _run(self) -> None:
        self._inside.busy = True  # whatever this thread logs is never published
        while not self._stopping.is_set():
            self._wake.wait(timeout=1.0)
            self._wake.clear()
            while self._queue and self.link.connected.is_set() and not self._stopping.is_set():
                self._publish(*self._queue.popleft())

    def _publish(self, record: logging.LogRecord, line: str, seq: int, dropped: int) -> None:
        try:
            message = DeviceLog(
                device_id=self.device_id,
                boot_id=self.boot_id,
                seq=seq,
                ts=record.created,
                level=_level_name(record.levelno),
                logger=record.name[:256],
                message=line,
                dropped=dropped,
            )
            self.link.publish(self.topic, encode(message), qos=0)
            self.sent += 1
        except Exception:  # noqa: BLE001 - counted, never logged (that would come back here)
            self.dropped_total += 1


_LEVELS = (
    (logging.CRITICAL, "CRITICAL"),
    (logging.ERROR, "ERROR"),
    (logging.WARNING, "WARNING"),
    (logging.INFO, "INFO"),
)


def _level_name(levelno: int) -> Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]:
    for number, name in _LEVELS:
        if levelno >= number:
            return name  # type: ignore[return-value]
    return "DEBUG"

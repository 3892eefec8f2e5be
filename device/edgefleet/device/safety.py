"""The agent's guard against crash loops and models that fail on real inputs.

Three small pieces of state, each kept apart from the update machinery:

* :class:`FailureWindow` counts a model's failures on real inputs (the interpreter raised,
  or the scores were NaN / infinite): ``failures`` of the last ``window`` inputs make the
  model *failed*, and the agent goes back to its last-known-good model.
* :class:`RestartLog` (``restarts.json`` in the state directory) counts the agent's own
  unclean exits: a *running* marker is written at start-up and cleared by an orderly
  shutdown, so a start that finds it set follows an unclean exit (a crash, SIGKILL, the
  OOM killer, a power cut). ``crash_restarts`` of them within ``crash_window_s`` start the
  agent in **safe mode**. It also remembers the *known-good* model: the one active at the
  last orderly shutdown, or after a whole crash window without a crash.
* :class:`InFlightJournal` (``inflight.txt``) names the watched-folder files being
  classified and not yet committed; in safe mode they are moved to ``rejected/``.

See docs/agent.md, "Never crash-loop".
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edgefleet.device.errors import DeviceError
from edgefleet.device.store import atomic_write

if TYPE_CHECKING:
    from pathlib import Path

    from edgefleet.device.config import SafetyConfig
    from edgefleet.device.sources import FolderWatcher
    from edgefleet.device.store import StateStore
    from edgefleet.device.updater import Updater

log = logging.getLogger(__name__)

RESTARTS_FILE = "restarts.json"
INFLIGHT_FILE = "inflight.txt"
MAX_JOURNAL_NAMES = 4096  # names read back from the journal at most


class FailureWindow:
    """Failures of one model on its last ``window`` inputs (``failures`` of them: failed).

    Args:
        failures: How many failures make the model failed.
        window: How many recent inputs count (at least ``failures``).
    """

    def __init__(self, failures: int = 3, window: int = 10) -> None:
        self.failures = max(1, failures)
        self._recent: deque[bool] = deque(maxlen=max(window, self.failures))
        self.reasons: deque[str] = deque(maxlen=3)

    def reset(self) -> None:
        """A new model serves: forget the old one's record."""
        self._recent.clear()
        self.reasons.clear()

    @property
    def failed(self) -> int:
        """Failures among the recent inputs."""
        return sum(1 for ok in self._recent if not ok)

    @property
    def seen(self) -> int:
        """How many recent inputs are counted."""
        return len(self._recent)

    def record(self, *, ok: bool, reason: str = "") -> bool:
        """Count one input; True when the model has now failed (the caller resets)."""
        self._recent.append(ok)
        if not ok:
            self.reasons.append(reason)
        return not ok and self.failed >= self.failures

    def summary(self) -> str:
        """What happened, for the report: "3 of the last 4 inputs failed (...)"."""
        last = "; ".join(r[:300] for r in self.reasons)
        return f"{self.failed} of the last {self.seen} inputs failed (last: {last})"


@dataclass
class StartInfo:
    """What :meth:`RestartLog.begin` found."""

    unclean: int  # unclean exits within the window, the one just found included
    safe_mode: bool
    known_good: str | None  # sha256 of the known-good model, if any


@dataclass
class RestartLog:
    """The agent's own restarts (see the module docstring).

    Attributes:
        path: ``restarts.json`` in the state directory.
        threshold: Unclean exits within ``window_s`` that start safe mode.
        window_s: The window, seconds.
        clock: Wall-clock time (the window must survive reboots: no monotonic clock).
    """

    path: Path
    threshold: int = 3
    window_s: float = 600.0
    clock: Callable[[], float] = time.time
    _state: dict[str, Any] = field(default_factory=dict)

    def _read(self) -> dict[str, Any]:
        try:
            raw = json.loads(self.path.read_bytes())
            return {
                "running": bool(raw.get("running", False)),
                "unclean": [float(t) for t in raw.get("unclean", [])][-1000:],
                "known_good": str(raw["known_good"]) if raw.get("known_good") else None,
            }
        except (OSError, ValueError, TypeError, AttributeError):
            # Missing (first start) or damaged: start counting afresh.
            return {"running": False, "unclean": [], "known_good": None}

    def _write(self) -> None:
        try:
            atomic_write(self.path, json.dumps(self._state, sort_keys=True).encode())
        except OSError as exc:
            log.warning("cannot write %s: %s", self.path, exc)

    def begin(self) -> StartInfo:
        """At start-up: count an unclean previous exit, set the running marker."""
        now = self.clock()
        state = self._read()
        unclean = [t for t in state["unclean"] if now - self.window_s <= t <= now]
        if state["running"]:
            unclean.append(now)
        self._state = {"running": True, "unclean": unclean, "known_good": state["known_good"]}
        self._write()
        return StartInfo(
            unclean=len(unclean) if state["running"] else 0,
            safe_mode=state["running"] and len(unclean) >= self.threshold,
            known_good=state["known_good"],
        )

    @property
    def unclean(self) -> int:
        """Unclean exits within the window (as of the last start)."""
        return len(self._state.get("unclean", []))

    def mark_good(self, sha256: str | None) -> None:
        """The model ``sha256`` is known-good (an orderly shutdown, or a calm window)."""
        if self._state and self._state.get("known_good") != sha256:
            self._state["known_good"] = sha256
            self._write()

    def calm(self, sha256: str | None) -> None:
        """A whole window without a crash: forget the old unclean exits, trust the model."""
        if self._state and (self._state.get("unclean") or self._state["known_good"] != sha256):
            self._state["unclean"] = []
            self._state["known_good"] = sha256
            self._write()

    def clean_exit(self, sha256: str | None) -> None:
        """An orderly shutdown: clear the running marker (the next start is not counted)."""
        if self._state:
            self._state["running"] = False
            self._state["known_good"] = sha256 or self._state.get("known_good")
            self._write()


def last_known_good(active: str | None, previous: str | None, known_good: str | None) -> str | None:
    """The model safe mode serves: the known-good one if stored, else the previous one.

    Returns the sha256 to serve (``active`` when that is already the best choice), or None
    when nothing is stored at all.
    """
    if known_good is not None and known_good in (active, previous):
        return known_good
    return previous if previous is not None else active


class InFlightJournal:
    """Names of the watched-folder files being classified and not committed yet.

    One line per file, appended (no fsync: it must survive the agent's death, not a power
    cut) before the file is classified; emptied once the batch is committed.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def left_over(self) -> list[str]:
        """The names a dead run left behind (read at start-up, before the first batch)."""
        try:
            with self.path.open("rb") as f:
                text = f.read(MAX_JOURNAL_NAMES * 300).decode(errors="replace")
        except OSError:
            return []
        names = [n for n in text.splitlines() if n and "/" not in n and n not in {".", ".."}]
        return list(dict.fromkeys(names))[:MAX_JOURNAL_NAMES]

    def add(self, name: str) -> None:
        """Note that ``name`` is being classified now."""
        try:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.write(self._fd, name.replace("\n", " ").encode(errors="replace") + b"\n")
        except OSError as exc:
            log.debug("cannot journal %s: %s", name, exc)

    def clear(self) -> None:
        """The batch is committed (or handled): nothing is in flight."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            return
        with contextlib.suppress(OSError):
            if self.path.stat().st_size:
                os.truncate(self.path, 0)

    def close(self) -> None:
        """Close the journal file (at shutdown)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


class Guard:
    """What the agent holds of the above: one per agent run (see the module docstring).

    Args:
        root: The state directory.
        config: The ``[safety]`` settings.
        clock: Wall-clock time.
    """

    def __init__(
        self, root: Path, config: SafetyConfig, clock: Callable[[], float] = time.time
    ) -> None:
        self.config = config
        self.clock = clock
        self.restarts = RestartLog(
            root / RESTARTS_FILE,
            threshold=config.crash_restarts,
            window_s=config.crash_window_s,
            clock=clock,
        )
        self.journal = InFlightJournal(root / INFLIGHT_FILE)
        self.model = FailureWindow(config.model_failures, config.model_failure_window)
        self.start = self.restarts.begin()  # counts an unclean exit before this start
        self.started = clock()
        self._calm = False
        self.served = False  # set once the main loop ended by itself (an orderly stop)

    @property
    def safe_mode(self) -> bool:
        """True when this run started in safe mode."""
        return self.start.safe_mode

    def last_known_good(self, active: str | None, previous: str | None) -> str | None:
        """The model safe mode serves (see :func:`last_known_good`)."""
        return last_known_good(active, previous, self.start.known_good)

    def in_flight(self) -> list[str]:
        """Files a dead run was classifying: quarantined in safe mode, else retried."""
        names = self.journal.left_over() if self.safe_mode else []
        self.journal.clear()
        return names

    def crash_message(self) -> str:
        """Why safe mode: for the log and the report."""
        return (
            f"the agent exited uncleanly {self.start.unclean} times within "
            f"{self.config.crash_window_s:g} s"
        )

    def model_result(self, failure: str | None) -> str | None:
        """Count one input of the active model; the summary once it counts as failed."""
        if not self.model.record(ok=failure is None, reason=failure or ""):
            return None
        summary = self.model.summary()
        self.model.reset()
        return summary

    def enter_safe_mode(
        self, store: StateStore, updater: Updater, watcher: FolderWatcher | None
    ) -> None:
        """Start in safe mode: the last-known-good model, in-flight files quarantined.

        Called before the agent loads its model (a model that kills the process while
        loading or serving is not loaded again); the reverted model's report is held for
        ``Updater.start``.
        """
        why = self.crash_message()
        log.error("safe mode: %s", why)
        active, previous = store.active(), store.previous()
        if active is not None:
            good = self.last_known_good(active.sha256, previous.sha256 if previous else None)
            if good != active.sha256:
                updater.serving_failed("crash_loop", f"{why} while it served", hold=True)
        for name in self.in_flight():
            path = watcher.directory / name if watcher is not None else None
            if path is not None and (path.exists() or path.is_symlink()):
                note = f"{name}: quarantined in safe mode ({why}; it was being classified)"
                watcher.done(path, error=note)  # type: ignore[union-attr]

    def beat(self, store: StateStore) -> None:
        """Periodic: after a whole crash window without a crash, the model is known-good."""
        if not self._calm and self.clock() - self.started >= self.config.crash_window_s:
            self._calm = True
            self.restarts.calm(_active_sha(store))

    def stopped(self, store: StateStore) -> None:
        """At shutdown: an orderly one clears the running marker; a crash leaves it set."""
        self.journal.close()
        if self.served:
            self.restarts.clean_exit(_active_sha(store))


def _active_sha(store: StateStore) -> str | None:
    try:
        active = store.active()
    except DeviceError:
        return None
    return active.sha256 if active else None

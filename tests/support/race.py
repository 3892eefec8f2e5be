"""Openers started at the same instant (a barrier), for tests of files created concurrently."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def at_once(openers: Sequence[Callable[[], T]], timeout: float = 60.0) -> tuple[list[T], list[str]]:
    """Run every opener in its own thread, all released together.

    Returns what the openers returned (in finishing order) and each failure as
    ``"ExceptionType: message"``. A thread still running after ``timeout`` counts as a failure.
    """
    barrier = threading.Barrier(len(openers))
    opened: list[T] = []
    errors: list[str] = []

    def run(opener: Callable[[], T]) -> None:
        barrier.wait()
        try:
            opened.append(opener())
        except Exception as exc:  # noqa: BLE001 - returned to the test, which asserts on it
            errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=run, args=(o,), daemon=True) for o in openers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout)
    errors += [f"{t.name} still running after {timeout} s" for t in threads if t.is_alive()]
    return opened, errors

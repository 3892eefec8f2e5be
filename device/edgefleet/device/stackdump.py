"""`kill -USR2 PID`: every thread's Python stack to standard error, without stopping anything.

The dump runs from a Python-level signal handler, that is on the main thread between two
bytecodes and with the GIL held. No other thread can push or pop a frame while it is being
read, so each dump is whole. (``faulthandler.register`` dumps from the C signal handler while
the other threads keep running; CI saw its dumps end mid-line, twice in a row.)

The price: while the main thread is inside one long C call (a model invocation, say) the dump
waits until that call returns. Blocking waits on locks, queues and sockets are interrupted by
the signal, so a main thread stuck in one of those is dumped at once.
"""

from __future__ import annotations

import faulthandler
import signal
import sys
from types import FrameType


def _dump(_signum: int, _frame: FrameType | None) -> None:
    # No lock and no logging here: faulthandler writes straight to the file descriptor.
    try:
        stream = sys.stderr
        stream.flush()
        faulthandler.dump_traceback(file=stream, all_threads=True)
    except (OSError, ValueError, AttributeError):
        pass  # no usable stderr (closed, or None under some service managers): nothing to do


def install(signum: int = signal.SIGUSR2) -> None:
    """Make ``signum`` dump every thread's stack; call from the main thread."""
    signal.signal(signum, _dump)

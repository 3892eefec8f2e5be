"""Crash-safe file writes, one implementation for host and device.

A reader sees the old file or the new one, never half of one: the data goes to a temp file
in the same folder, which is fsynced and then renamed over the target; the folder is
fsynced too, so the rename itself survives a power cut.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable


def fsync_dir(path: Path) -> None:
    """Make a rename or create in the folder ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(
    path: Path,
    data: bytes,
    *,
    mode: int = 0o644,
    durable: bool = True,
    before_replace: Callable[[], None] | None = None,
    overwrite: bool = True,
) -> None:
    """Write ``data`` to ``path`` via a temp file and a rename; create missing folders.

    Args:
        path: Destination.
        data: The whole content.
        mode: Permissions of the new file. They are set on the temp file before any byte
            is written, so a private key is never readable by others, not even briefly.
        durable: fsync the file and the folder. Without it the write still survives the
            process dying at any point (SIGKILL), but a power cut may lose it or, on some
            file systems, leave the new name with old or empty content: only for data that
            is checked against a hash before it is used.
        before_replace: Called after the fsync, just before the rename; the device fires
            its named fault points here (a test can stop the write at that exact moment).
            If it raises, the temp file is removed and the target is untouched.
        overwrite: False links the temp file into place instead of renaming it, so an
            existing ``path`` is kept: of concurrent first writers one wins and the others
            leave its complete file alone.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        if before_replace is not None:
            before_replace()
        if overwrite:
            Path(tmp).replace(path)
        else:
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
            Path(tmp).unlink()
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)

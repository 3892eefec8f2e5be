"""The chunk list of a v2 manifest (delta updates): make it, check it, compare two of them.

A v2 manifest lists, for each variant, every content-defined chunk of the file as
``[sha256, offset, length]`` in file order (docs/protocol.md, section 7.5). A device that
holds a chunk with that sha256 - in its active or previous model, or a partial download -
copies it; it fetches the others from ``{prefix}/models/{chunk sha256}/chunks/0``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from typing import Final

from edgefleet.shared.cdc import MAX_CHUNK_BYTES, CdcParams, chunk_model
from edgefleet.shared.errors import MalformedManifestError

MANIFEST_VERSIONS: Final = (1, 2)  # the manifest schema versions this code understands
MAX_LISTED_CHUNKS: Final = 4096  # a v2 variant's chunk list, at most (the envelope's size)

ChunkEntry = tuple[str, int, int]  # sha256 hex, offset, length


def check_schema_version(payload: bytes) -> None:
    """Refuse, with the reason in words, a signed manifest of a newer schema than this code.

    Raises:
        MalformedManifestError: ``v`` is an integer this code does not know.
    """
    try:
        v = json.loads(payload).get("v")
    except (ValueError, AttributeError, RecursionError):
        return  # not JSON / not an object: the schema check says what is wrong
    if isinstance(v, int) and not isinstance(v, bool) and v not in MANIFEST_VERSIONS:
        known = ", ".join(f"v{n}" for n in MANIFEST_VERSIONS)
        msg = (
            f"manifest schema v{v} is not one this agent understands ({known}): "
            "upgrade the agent (edgefleet-agent) to take it"
        )
        raise MalformedManifestError(msg)


def check_chunk_list(chunks: Sequence[ChunkEntry], size: int, chunk_size: int, count: int) -> None:
    """Check that ``chunks`` tile the file exactly and agree with chunk_size / chunk_count.

    Raises:
        ValueError: the list has gaps or overlaps, or an entry is out of range.
    """
    if not chunks:
        raise ValueError("a v2 variant lists at least one chunk")
    pos = 0
    for i, (_, offset, length) in enumerate(chunks):
        if offset != pos or not 1 <= length <= MAX_CHUNK_BYTES:
            msg = (
                f"chunk {i} is at {offset} with {length} bytes; "
                f"expected offset {pos} and 1..{MAX_CHUNK_BYTES} bytes"
            )
            raise ValueError(msg)
        pos += length
    if pos != size:
        raise ValueError(f"chunks cover {pos} bytes, the file has {size}")
    if count != len(chunks) or chunk_size != max(c[2] for c in chunks):
        raise ValueError("chunk_count must be the number of chunks, chunk_size the longest")


def make_chunk_list(data: bytes, *, align: bool = True) -> list[ChunkEntry]:
    """The chunk list the host signs for ``data`` (FastCDC at the TFLite buffers)."""
    params = CdcParams.for_size(len(data), max_chunks=MAX_LISTED_CHUNKS // 2)
    return [
        (hashlib.sha256(data[o : o + n]).hexdigest(), o, n)
        for o, n in chunk_model(data, params, align=align)
    ]


def bytes_to_send(wanted: Sequence[ChunkEntry], held: Iterable[str]) -> int:
    """Bytes of ``wanted`` whose sha256 is not in ``held``; each distinct chunk counted once."""
    have = set(held)
    sizes = {sha: length for sha, _, length in wanted if sha not in have}
    return sum(sizes.values())

"""Hostile inputs against a real agent on a real mosquitto (issue 16: attacks 2, 7, 10, 12).

Every input below used to crash the agent (and, left in the inbox, crash it again on every
restart), take gigabytes, be taken half-written, sit in the inbox forever, or be opened
through a symbolic link. Each must now end in ``rejected/`` with a reason (or, for the slow
writer, be classified once complete), the next valid input must be classified, the agent
must stay up, with a peak RSS under 150 MB, and still run after a restart.
"""

from __future__ import annotations

import io
import os
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from edgefleet.host.fleet._images import image_message
from edgefleet.shared.messages import encode
from support.agent import (
    AgentProcess,
    FakeHost,
    ModelBundle,
    mnist_eval_pngs,
    shared_mnist_model,
    signed_agent_config,
)
from support.faults import digit_png, ping, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]
DEVICE = "pi-hostile"
CHUNK = 4096
PEAK_RSS_LIMIT_KIB = 150 * 1024
SETTLE_S = 0.3
INCOMPLETE_S = 3.0


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG announcing width x height, a few KB on disk (what a bomb looks like)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\0" * (width + 1) * 64, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def npy_claiming(shape: tuple[int, ...], *, total: int | None = None) -> bytes:
    """A .npy header for a float64 array of ``shape`` (padded with zeros to ``total``)."""
    buf = io.BytesIO()
    header = {"descr": "<f8", "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buf, header)
    data = buf.getvalue()
    return data + b"\0" * ((total or len(data)) - len(data))


def deliver(inbox: Path, name: str, data: bytes) -> Path:
    """Write a dot-file, then rename it into the inbox (the recommended way)."""
    tmp = inbox / f".{name}.tmp"
    tmp.write_bytes(data)
    target = inbox / name
    tmp.rename(target)
    return target


def slow_writer(path: Path, data: bytes, pause_s: float) -> threading.Thread:
    """Write half of ``data`` in place, pause longer than the settle time, write the rest."""

    def run() -> None:
        with path.open("wb") as fh:
            fh.write(data[: len(data) // 2])
            fh.flush()
            time.sleep(pause_s)
            fh.write(data[len(data) // 2 :])

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmHWM for pid {pid}")


@pytest.fixture(scope="module")
def mnist_bundle(tmp_path_factory) -> ModelBundle:
    return shared_mnist_model(tmp_path_factory)


@pytest.fixture
def rig(tmp_path: Path, broker, prefix, mnist_bundle):
    """A real agent serving the tiny MNIST model, watching ``inbox``; yields helpers."""
    host = FakeHost(broker.url, prefix)
    signer, inbox, config = signed_agent_config(
        tmp_path,
        device_id=DEVICE,
        broker_url=broker.url,
        prefix=prefix,
        extra=f"settle_s = {SETTLE_S}\nincomplete_timeout_s = {INCOMPLETE_S}\n",
    )
    agents: list[AgentProcess] = []

    def start() -> AgentProcess:
        agents.append(AgentProcess(config))
        return agents[-1]

    start()
    host.offer(mnist_bundle.data, chunk_size=CHUNK)
    _, envelope = signer.manifest(mnist_bundle, version=1, devices=[DEVICE], chunk_size=CHUNK)
    host.push(envelope, device=DEVICE)
    host.wait_report(DEVICE, state="active", version=1, timeout=90)
    yield host, inbox, start, agents
    for agent in agents:
        agent.kill()
    host.close()


def note(inbox: Path, name: str) -> str:
    return (inbox / "rejected" / f"{name}.error.txt").read_text()


def wait_rejected(inbox: Path, names: set[str], timeout: float = 30.0) -> None:
    def all_there() -> bool:
        return all((inbox / "rejected" / f"{n}.error.txt").exists() for n in names)

    wait_until(all_there, timeout=timeout, what=f"rejected/ notes for {sorted(names)}")


def classified(host: FakeHost, names: set[str], timeout: float = 30.0) -> dict[str, object]:
    return host.wait(
        lambda h: (
            (recs := {r.source: r for r in h.records.values() if r.source in names})
            and len(recs) == len(names)
            and recs
        ),
        timeout,
    )


def test_hostile_folder_inputs_are_rejected_and_the_agent_keeps_classifying(rig, tmp_path: Path):
    host, inbox, start, agents = rig
    agent = agents[-1]
    secret = tmp_path / "root-only.npy"
    secret.write_bytes(npy_claiming((2, 2), total=160))
    secret.chmod(0o600)

    deliver(inbox, "bomb-20000.png", bomb_png(20000, 20000))
    deliver(inbox, "big-12000.png", bomb_png(12000, 12000))
    deliver(inbox, "claims-8tb.npy", npy_claiming((1_000_000, 1_000_000), total=192))
    with (inbox / "huge-288mb.npy").open("wb") as fh:  # sparse: 288 MB, no disk, not read
        fh.write(npy_claiming((36_000_000,)))
        fh.truncate(288_000_128)
    (inbox / "shadow.npy").symlink_to(secret)
    os.mkfifo(inbox / "pipe.png")
    (inbox / "empty.png").write_bytes(b"")
    deliver(inbox, "garbage.png", b"\x89PNG\r\n\x1a\n" + os.urandom(500))
    writer = slow_writer(inbox / "slow.png", digit_png(3), pause_s=SETTLE_S * 4)

    wait_rejected(inbox, {"bomb-20000.png", "big-12000.png", "claims-8tb.npy", "huge-288mb.npy"})
    wait_rejected(inbox, {"shadow.npy", "pipe.png"})
    assert "(20000x20000) is 400,000,000 pixels" in note(inbox, "bomb-20000.png")
    assert "limits.max_pixels" in note(inbox, "big-12000.png")
    assert "limits.max_array_elements" in note(inbox, "claims-8tb.npy")
    assert "288,000,128 bytes" in note(inbox, "huge-288mb.npy")
    assert "limits.max_input_bytes" in note(inbox, "huge-288mb.npy")
    assert "a symbolic link, not a regular file" in note(inbox, "shadow.npy")
    assert "(2, 2)" not in note(inbox, "shadow.npy")  # nothing of the target was read
    assert (inbox / "rejected" / "shadow.npy").is_symlink()
    assert secret.exists()
    assert "named pipe (fifo)" in note(inbox, "pipe.png")

    # the slow writer's file is classified once complete, not rejected half-written
    writer.join()
    classified(host, {"slow.png"})
    # The record can reach the host before the agent's main thread moves the file (it moves
    # files once their records are committed, while the network thread already sends them).
    wait_until((inbox / "processed" / "slow.png").exists, timeout=10, what="slow.png moved")
    assert not (inbox / "rejected" / "slow.png").exists()

    # empty and undecodable files wait for incomplete_timeout_s, then are rejected
    wait_rejected(inbox, {"empty.png", "garbage.png"}, timeout=INCOMPLETE_S + 20)
    assert "empty file (0 bytes)" in note(inbox, "empty.png")
    assert "cannot decode png image" in note(inbox, "garbage.png")

    # the next valid input is classified; nothing is left in the inbox; the agent runs
    truth = mnist_eval_pngs(inbox, 3, start=100)
    classified(host, set(truth))
    left = lambda: sorted(p.name for p in inbox.iterdir())  # noqa: E731
    wait_until(lambda: left() == ["processed", "rejected"], timeout=10, what="an empty inbox")
    assert agent.proc.poll() is None, agent.log()[-3000:]
    status = host.wait(
        lambda h: (s := h.latest_status(DEVICE)) and s.rejected_inputs == 8 and s, timeout=10
    )
    assert status.online
    peak = peak_rss_kib(agent.proc.pid)
    assert peak < PEAK_RSS_LIMIT_KIB, f"peak RSS {peak} KiB"

    restart_and_check(host, agent, start, status.boot_id)


def restart_and_check(host: FakeHost, agent: AgentProcess, start, boot: str | None) -> None:
    """A restart finds nothing to trip over: it runs and classifies (no crash loop)."""
    assert agent.stop() == 0
    again = start()
    host.wait(lambda h: (s := h.latest_status(DEVICE)) and s.online and s.boot_id != boot)
    ping(host, DEVICE)
    time.sleep(1.0)
    assert again.proc.poll() is None, again.log()[-3000:]


def test_hostile_image_topic_messages_are_counted_and_the_agent_keeps_classifying(
    rig, tmp_path: Path
):
    host, _inbox, _start, agents = rig
    agent = agents[-1]
    files = {
        "bomb-20000.png": bomb_png(20000, 20000),
        "big-12000.png": bomb_png(12000, 12000),
        "claims-8tb.npy": npy_claiming((1_000_000, 1_000_000), total=192),
        "garbage.png": b"\x89PNG\r\n\x1a\n" + os.urandom(500),
    }
    topic = host.topics.images(DEVICE)
    for name, data in files.items():
        path = tmp_path / name
        path.write_bytes(data)
        message = image_message(path)  # what `edgefleet send-image` publishes
        host.client.publish(topic, encode(message), 1).wait_for_publish(5)
    # over max_image_message_bytes (4 MiB): refused by the agent unparsed; 9 MiB: over the
    # maximum packet size the agent announced, so the broker never delivers it
    for size in (4 * 2**20 + 1000, 9 * 2**20):
        host.client.publish(topic, b"{" + b" " * size + b"}", 1).wait_for_publish(10)

    record = ping(host, DEVICE)
    assert record.model_version == 1
    status = host.wait(
        lambda h: (s := h.latest_status(DEVICE)) and s.rejected_inputs == 5 and s, timeout=10
    )
    assert status.online
    log = agent.log()
    assert "limits.max_pixels" in log
    assert "limits.max_array_elements" in log
    assert "limits.max_image_message_bytes" in log
    assert agent.proc.poll() is None
    peak = peak_rss_kib(agent.proc.pid)
    assert peak < PEAK_RSS_LIMIT_KIB, f"peak RSS {peak} KiB"

"""The agent's paho client against a real Mosquitto: socket I/O stays on the network thread."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from edgefleet.device._mqtt import make_client
from edgefleet.device.config import parse_config

pytestmark = pytest.mark.integration


def test_publish_from_the_main_thread_never_writes_the_socket(broker, prefix, tmp_path: Path):
    # Two threads writing one SSL socket corrupt the TLS stream ("Protocol error" at the
    # broker): every write must happen on the thread that runs client.loop().
    text = f'device_id = "io-1"\nstate_dir = "s"\n[mqtt]\nurl = "{broker.url}"\nprefix = "{prefix}"'
    client = make_client(parse_config(text, base=tmp_path))
    writers: set[str] = set()
    loop_write = client.loop_write

    def recording_write() -> int:
        writers.add(threading.current_thread().name)
        return loop_write()

    client.loop_write = recording_write  # type: ignore[method-assign]
    stop = threading.Event()

    def network() -> None:
        while not stop.is_set():
            client.loop(timeout=0.2)

    client.connect("127.0.0.1", broker.port, 30)
    net = threading.Thread(target=network, name="mqtt-network")
    net.start()
    try:
        infos = [client.publish(f"{prefix}/x", b"p", 1) for _ in range(50)]
        client.subscribe(f"{prefix}/y", 1)
        deadline = time.monotonic() + 30
        while not all(i.is_published() for i in infos) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert all(i.is_published() for i in infos)
    finally:
        client.disconnect()
        stop.set()
        net.join(timeout=5)
    assert writers == {"mqtt-network"}

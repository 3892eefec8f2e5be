"""Input thumbnails on a real TLS fleet: a device publishes on its own thumbnails topic only.

Mosquitto runs the config and ACL `edgefleet init` renders (deploy/mosquitto/acl.tmpl:
``pattern write {p}/devices/%u/thumbnails``). A raw client holding devA's real certificate
publishes an :class:`InputThumbnail` on devA's ``thumbnails`` topic, which reaches the host
over TLS, and one on devB's, which the broker drops: the host receives nothing for devB.
"""

from __future__ import annotations

import base64
import io
import time

import pytest
from PIL import Image

from edgefleet.host.fleet import close_fleet, open_fleet
from edgefleet.shared.messages import InputThumbnail, decode

try:  # the helpers of the trust test: one TLS fleet recipe for the security tests
    from test_trust import RawDevice, make_fleet
except ImportError:  # pragma: no cover - run from another rootdir
    from security.test_trust import RawDevice, make_fleet

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("L", (4, 4), 128).save(out, format="PNG")
    return out.getvalue()


def _thumbnail(device: str, seq: int, boot_id: str) -> dict:
    return InputThumbnail(
        device_id=device,
        boot_id=boot_id,
        seq=seq,
        format="png",
        data_b64=base64.b64encode(_png()).decode(),
        width=4,
        height=4,
    ).model_dump()


def _thumbnails_until(host, topic: str, boot_id: str, seconds: float = 30.0) -> list[tuple]:
    """(topic, device_id, boot_id, seq) of each thumbnail until one on ``topic`` has ``boot_id``."""
    seen: list[tuple] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        msg = host.conn.next_message(left)
        if msg is None or not msg.topic.endswith("/thumbnails"):
            continue
        thumb = decode(InputThumbnail, msg.payload)
        seen.append((msg.topic, thumb.device_id, thumb.boot_id, thumb.seq))
        if msg.topic == topic and thumb.boot_id == boot_id:
            return seen
    pytest.fail(f"no thumbnail of boot {boot_id!r} on {topic}; got {seen}")


def test_a_device_publishes_its_own_thumbnails_but_not_another_devices(tmp_path):
    config, bundles, broker = make_fleet(tmp_path, {"devA": ["g"], "devB": ["g"]})
    host = open_fleet(broker=None, fleet_dir=config.root, state_dir=tmp_path / "host")
    raw = None
    try:
        t = host.topics
        host.conn.subscribe(t.all_thumbnails())  # returns after the SUBACK
        raw = RawDevice(bundles["devA"], broker.port, client_id="devA")
        # Forged first, then devA's own: one connection, so the broker handles them in order
        # and devA's own arriving means the forged one was dropped, not still on its way.
        raw.publish(t.thumbnails("devB"), _thumbnail("devB", 1, "forged-by-devA"))
        raw.publish(t.thumbnails("devA"), _thumbnail("devA", 2, "devA-own"))
        seen = _thumbnails_until(host, t.thumbnails("devA"), "devA-own")
        assert seen[-1] == (t.thumbnails("devA"), "devA", "devA-own", 2)
        # and a second forgery after the first own one: still nothing for devB
        raw.publish(t.thumbnails("devB"), _thumbnail("devB", 3, "forged-again"))
        raw.publish(t.thumbnails("devA"), _thumbnail("devA", 4, "devA-own-2"))
        seen += _thumbnails_until(host, t.thumbnails("devA"), "devA-own-2")
        assert all(topic != t.thumbnails("devB") for topic, *_ in seen), seen
        assert [row[3] for row in seen] == [2, 4], seen
        assert raw.disconnects == [], "Mosquitto drops a denied publish, it keeps the client"
    finally:
        if raw is not None:
            raw.close()
        close_fleet(host)
        broker.stop()

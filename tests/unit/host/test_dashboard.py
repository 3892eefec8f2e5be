"""The dashboard's parts without a browser: accounts, CSRF, listen policy, queries, thumbnails.

The pages themselves are tested in a real browser (tests/integration/test_dashboard_browser.py);
here a real uvicorn server on loopback answers plain HTTP requests for the checks that need no
JavaScript (login refusals, CSRF, security headers, read-only viewing).
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import socket
import sqlite3
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uvicorn
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from PIL import Image

from edgefleet.device.config import InferenceConfig
from edgefleet.device.thumbnails import encode_thumbnail, thumbnail_for
from edgefleet.host.dashboard import (
    Dashboard,
    Policy,
    Settings,
    Tls,
    Users,
    check_listen,
    fleet_ca_certificate,
)
from edgefleet.host.dashboard._auth import Sessions, check_password, hash_password
from edgefleet.host.dashboard._live import LiveFleet
from edgefleet.host.dashboard._queries import (
    AuditLog,
    Search,
    class_counts,
    device_logs,
    latest,
    open_readonly,
    per_minute,
    record_json,
)
from edgefleet.host.dashboard._render import chart_model, make_templates
from edgefleet.host.dashboard._views import push_history, rollout_views
from edgefleet.host.errors import FleetError
from edgefleet.host.fleet import Fleet, ModelFiles, PushPlan, SqliteStore, open_registry, push
from edgefleet.host.fleet._logs import LogStore
from edgefleet.host.provision import init_fleet
from edgefleet.shared.gpr import render_png
from edgefleet.shared.manifest import Manifest, ModelVariant, Targets, key_id_for, open_envelope
from edgefleet.shared.messages import (
    MAX_THUMBNAIL_BYTES,
    DeviceLog,
    InputThumbnail,
    PredictionRecord,
    Reported,
    Status,
    UpdateState,
    decode,
    encode,
)
from edgefleet.shared.spec import PreprocessSpec, TensorSpec
from edgefleet.shared.topics import Topics
from support.fakebroker import FakeBroker

ROOT = Path(__file__).resolve().parents[3]
GPR_SCAN = next((ROOT / "host/edgefleet/host/datasets/data/gpr/heldout/metal").glob("*.npy"))


# -- accounts, sessions, CSRF ---------------------------------------------------------------


def test_passwords_are_scrypt_hashes_that_check_only_the_right_password(tmp_path: Path) -> None:
    stored = hash_password("s3cret-password")
    assert stored.startswith("scrypt$16384$8$1$")
    assert "s3cret" not in stored
    assert check_password("s3cret-password", stored)
    assert not check_password("s3cret-passwore", stored)
    assert not check_password("x", "garbage")
    users = Users(tmp_path / "users.json")
    users.add("op", "long enough")
    assert (tmp_path / "users.json").stat().st_mode & 0o777 == 0o600
    again = Users(tmp_path / "users.json")
    assert again.verify("op", "long enough")
    assert not again.verify("op", "long enougH")
    assert not again.verify("nobody", "long enough")
    with pytest.raises(FleetError, match="at least 8"):
        users.add("op2", "short")
    with pytest.raises(FleetError, match="user name"):
        users.add("bad name", "long enough")


def test_a_damaged_accounts_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "users.json").write_text("{not json")
    with pytest.raises(FleetError, match="--add-user"):
        Users(tmp_path / "users.json")


def test_csrf_tokens_are_bound_to_their_cookie() -> None:
    sessions = Sessions()
    token = sessions.start("op")
    assert sessions.user(token) == "op"
    csrf = sessions.csrf(token)
    assert sessions.csrf_ok(token, csrf)
    assert not sessions.csrf_ok("another", csrf)
    assert not sessions.csrf_ok(token, "")
    assert not Sessions().csrf_ok(token, csrf)  # another process's secret
    sessions.end(token)
    assert sessions.user(token) is None
    expired = Sessions(ttl_s=-1)
    assert expired.user(expired.start("op")) is None


# -- listen policy ------------------------------------------------------------------------


def test_loopback_is_read_only_without_login_anything_else_needs_tls_and_accounts(
    tmp_path: Path,
) -> None:
    nobody = Users(tmp_path / "none.json")
    host, port, policy = check_listen("127.0.0.1:8080", tls=None, users=nobody)
    assert (host, port, policy) == ("127.0.0.1", 8080, Policy(login_to_view=False, tls=False))
    assert not check_listen("[::1]:8080", tls=None, users=nobody)[2].login_to_view
    with pytest.raises(FleetError, match=r"not a loopback address.*needs TLS"):
        check_listen("0.0.0.0:8080", tls=None, users=nobody)
    tls = Tls(cert=tmp_path / "c", key=tmp_path / "k")
    with pytest.raises(FleetError, match="--add-user"):
        check_listen("192.0.2.1:8443", tls=tls, users=nobody)
    users = Users(tmp_path / "users.json")
    users.add("op", "long enough")
    assert check_listen("192.0.2.1:8443", tls=tls, users=users)[2] == Policy(
        login_to_view=True, tls=True
    )
    with pytest.raises(FleetError, match="HOST:PORT"):
        check_listen("8080", tls=None, users=nobody)


# -- prediction store queries ---------------------------------------------------------------


def _record(
    seq: int,
    *,
    device: str = "pi-1",
    label: str = "metal",
    score: float = 0.9,
    ts: float = 1_800_000_000.0,
) -> PredictionRecord:
    return PredictionRecord(
        device_id=device,
        boot_id="b1",
        seq=seq,
        source=f"watch:/in/scan-{seq}.npy",
        label=label,
        score=score,
        latency_ms=1.5,
        model_name="gpr_convnet",
        model_version=3,
        ts=ts,
    )


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "predictions.sqlite"
    s = SqliteStore(path)
    png = base64.b64encode(b"\x89PNG fake").decode()
    # Record 9's thumbnail arrives before the record; one names a record that never comes.
    for seq in (9, 99):
        thumb = InputThumbnail(
            device_id="pi-1", boot_id="b1", seq=seq, format="png", data_b64=png, width=2, height=3
        )
        assert s.add_thumbnail(thumb, received_at=1_800_000_000.0)
    s.add(
        [
            _record(
                i,
                device="pi-1" if i % 2 else "pi-2",
                label=("metal", "plastic", "none")[i % 3],
                score=i / 10,
                ts=1_800_000_000.0 + 30 * i,
            )
            for i in range(1, 10)
        ]
    )
    s.close()
    return path


def test_search_counts_and_chart_use_every_filter(store: Path) -> None:
    db = open_readonly(store)
    assert db is not None
    rows = latest(db, Search())
    assert [r["seq"] for r in rows] == list(range(9, 0, -1))  # newest first
    assert rows[0]["has_thumb"] == 1
    assert all(not r["has_thumb"] for r in rows[1:])
    assert [r["seq"] for r in latest(db, Search(device="pi-2"))] == [8, 6, 4, 2]
    assert [r["seq"] for r in latest(db, Search(label="metal", min_score=0.5))] == [9, 6]
    assert [r["seq"] for r in latest(db, Search(max_score=0.2))] == [2, 1]
    since = 1_800_000_000.0 + 30 * 7
    assert [r["seq"] for r in latest(db, Search(since=since))] == [9, 8, 7]
    assert [r["seq"] for r in latest(db, Search(), after_id=7)] == [9, 8]
    assert class_counts(db, Search()) == [("metal", 3), ("none", 3), ("plastic", 3)]
    start, counts = per_minute(db, Search(), minutes=10)
    assert sum(counts) == 9
    assert start % 60 == 0
    assert counts[-1] >= 1  # the window ends at the newest record
    assert record_json(db, 9)["thumbnail"] == {"format": "png", "width": 2, "height": 3}
    assert "thumbnail" not in json.loads(  # the stored record itself never carries it
        db.execute("SELECT record FROM predictions WHERE id = 9").fetchone()[0]
    )
    assert record_json(db, 1)["thumbnail"] is None
    assert record_json(db, 99) is None
    db.close()
    # A record stored by the development version that kept a thumbnail inside the record
    # still opens (the old field is ignored; pictures come from the side table only).
    raw = sqlite3.connect(store)
    old = json.loads(raw.execute("SELECT record FROM predictions WHERE id = 1").fetchone()[0])
    old["thumbnail"] = {"format": "png", "data_b64": png_b64()}
    with raw:
        raw.execute("UPDATE predictions SET record = ? WHERE id = 1", (json.dumps(old),))
    raw.close()
    db = open_readonly(store)
    assert db is not None
    assert record_json(db, 1)["thumbnail"] is None
    assert record_json(db, 1)["seq"] == 1
    db.close()
    # A store made before the side table existed: no pictures, no errors.
    raw = sqlite3.connect(store)
    with raw:
        raw.execute("DROP TABLE thumbnails")
    raw.close()
    db = open_readonly(store)
    assert db is not None
    assert not any(r["has_thumb"] for r in latest(db, Search()))
    assert record_json(db, 9)["thumbnail"] is None
    db.close()


def png_b64() -> str:
    return base64.b64encode(b"\x89PNG fake").decode()


def test_device_log_lines_show_when_the_store_has_them(store: Path) -> None:
    db = open_readonly(store)
    assert db is not None
    assert device_logs(db, "pi-1") is None  # no logs table: the page leaves the section out
    db.close()
    logs = LogStore(store)
    for seq, level in ((1, "INFO"), (2, "WARNING")):
        line = DeviceLog(
            device_id="pi-1",
            boot_id="b1",
            seq=seq,
            ts=1_800_000_000.0 + seq,
            level=level,
            logger="edgefleet.device.agent",
            message=f"line {seq}",
        )
        logs.add(line, received_at=1_800_000_010.0)
    db = open_readonly(store)
    assert db is not None
    lines = device_logs(db, "pi-1")
    agent = "edgefleet.device.agent"
    assert lines == [
        {"ts": 1_800_000_002.0, "level": "WARNING", "logger": agent, "message": "line 2"},
        {"ts": 1_800_000_001.0, "level": "INFO", "logger": agent, "message": "line 1"},
    ]
    assert device_logs(db, "pi-2") == []
    db.close()


def test_the_chart_scales_bars_to_the_busiest_minute() -> None:
    chart = chart_model(1_800_000_000.0, [0, 5, 10])
    heights = [b["h"] for b in chart["bars"]]
    assert heights == [0.0, chart["height"] / 2, chart["height"]]
    assert chart["max"] == 10
    assert chart_model(0.0, [0, 0])["max"] == 0


def test_the_audit_log_lives_in_the_push_registry(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path)
    audit.add(user="op", action="cancel", target="group:field", result="cancelled", remote="::1")
    assert audit.recent()[0]["action"] == "cancel"
    assert (tmp_path / "registry.sqlite").exists()
    audit.close()


# -- the rollouts page: canary, waves, each device's step, failures with reasons -----------------

TOPICS = Topics("edgefleet")
HEALTH = "top-1 agreement 0.41 on the check set, below 0.90"


def _model_files(data: bytes) -> ModelFiles:
    template = Manifest(
        name="gpr",
        version=1,
        created_at=0,
        expires_at=1,
        targets=Targets(),
        variants=[ModelVariant.for_bytes(data, accelerator="cpu", chunk_size=1000)],
        mode="int8",
        input=TensorSpec(shape=(1, 28, 28, 1), dtype="int8", scale=0.0039, zero_point=-128),
        output=TensorSpec(shape=(1, 4), dtype="int8", scale=0.00390625, zero_point=-128),
        preprocess=PreprocessSpec(height=28, width=28),
        labels=["metal", "pipe", "void", "none"],
    )
    return ModelFiles("gpr", {"cpu": data}, template)


class _Agent:
    """A group member on the fake broker: takes each newer manifest at once, or fails it."""

    def __init__(self, broker: FakeBroker, key: Ed25519PrivateKey, device: str, *, fail: bool):
        self.device, self.fail, self.active = device, fail, 0
        self.trusted = {key_id_for(key.public_key()): key.public_key()}
        self.conn = broker.connect(f"agent-{device}", on_message=self.on_message)
        status = Status(device_id=device, online=True, groups=["field"], ts=time.time())
        self.conn.publish(TOPICS.status(device), encode(status), retain=True)
        self.conn.subscribe(TOPICS.desired_device(device), TOPICS.desired_group("field"))

    def on_message(self, msg: Any) -> None:
        if not msg.payload:
            return
        manifest = open_envelope(msg.payload, trusted_keys=self.trusted)
        if manifest.version <= self.active:
            return
        about: dict[str, Any] = {"version": manifest.version, "sha256": manifest.variants[0].sha256}
        if self.fail:
            step = {"step": "health_check", "reason": "health_check", "message": HEALTH}
            report = Reported(
                device_id=self.device, state=UpdateState.FAILED, ts=time.time(), **about, **step
            )
        else:
            self.active = manifest.version
            report = Reported(
                device_id=self.device,
                state=UpdateState.ACTIVE,
                active_version=manifest.version,
                ts=time.time(),
                **about,
            )
        self.conn.publish(TOPICS.reported(self.device), encode(report), retain=True)


@pytest.fixture
def pushed(tmp_path: Path) -> Fleet:
    """A real ``push --group field --canary 1 --max-failures 50`` to 4 devices; d3 fails."""
    broker, key = FakeBroker(), Ed25519PrivateKey.generate()
    for device in ("d1", "d2", "d3", "d4"):
        _Agent(broker, key, device, fail=device == "d3")
    registry = open_registry(tmp_path / "state")
    fleet = Fleet(conn=broker.connect("host"), topics=TOPICS, registry=registry, signing_key=key)
    plan = PushPlan(group="field", wait=5.0, canary=1, max_failures=50)
    result = push(fleet, _model_files(bytes(range(256)) * 10), plan)
    assert result.aborted is None, result.aborted  # 1 of 4 failed: within 50 %
    assert result.exit_code == 1  # not every target is active
    return fleet


def _render_rollout(view: dict[str, Any]) -> str:
    return make_templates().get_template("_rollout.html").render(p=view)


def test_a_canary_and_waves_push_shows_each_devices_step_and_the_failure_reason(
    pushed: Fleet,
) -> None:
    [view] = rollout_views(pushed)
    assert (view["target"], view["kind"], view["state"]) == ("group:field", "push", "failures")
    # plan_waves: the canary (1 online device), then waves of 2, 4, ... devices.
    plan = view["plan"]
    assert (plan["canary"], plan["waves"], plan["max_failures"]) == (["d1"], [2, 1], 50)
    steps = {d["id"]: d["step"] for d in view["devices"]}
    assert steps == {"d1": "canary", "d2": "wave 1", "d3": "wave 1", "d4": "wave 2"}
    [failure] = view["failures"]
    assert (failure["id"], failure["step"], failure["reason"]) == ("d3", "wave 1", "health_check")
    assert failure["message"] == HEALTH

    html = _render_rollout(view)
    assert "canary 1 · waves 2, 1 · max failures 50 %" in html
    assert "(canary: d1)" in html
    row = {
        d: html.split(f'data-device="{d}"')[1].split("</tr>")[0] for d in ("d1", "d2", "d3", "d4")
    }
    assert '<td class="step">canary</td>' in row["d1"]
    assert '<td class="step">wave 1</td>' in row["d3"]
    assert '<td class="step">wave 2</td>' in row["d4"]
    assert "failed: health_check" in row["d3"]
    assert "3/4 active, 1 failed" in html
    failures = html.split('<ul class="failures small">')[1].split("</ul>")[0]
    assert "<b>d3</b> (wave 1)" in failures
    assert "failed: health_check" in failures
    assert HEALTH in failures
    assert html.count('class="dev"') == 4  # the failure list adds no progress rows

    [history] = [h for h in push_history(pushed) if h["target"] == "group:field"]
    assert history["plan"]["text"] == "canary 1 · waves 2, 1 · max failures 50 %"


def test_a_plan_survives_a_reopened_registry_and_a_stopped_canary_says_why(
    tmp_path: Path,
) -> None:
    broker, key = FakeBroker(), Ed25519PrivateKey.generate()
    for device in ("d1", "d2", "d3"):
        _Agent(broker, key, device, fail=device == "d1")
    registry = open_registry(tmp_path / "state")
    fleet = Fleet(conn=broker.connect("host"), topics=TOPICS, registry=registry, signing_key=key)
    result = push(fleet, _model_files(bytes(300)), PushPlan(group="field", wait=5.0, canary=1))
    assert result.aborted is not None
    assert result.aborted.startswith("canary failed: d1")
    registry.close()
    # Another process (the dashboard) reads what the push recorded.
    fleet.registry = open_registry(tmp_path / "state")
    try:
        [view] = rollout_views(fleet)  # no group push: only the canary's device manifest
        assert (view["target"], view["kind"]) == ("device:d1", "canary")
        assert view["plan"]["of"] == "group:field"
        assert view["plan"]["aborted"] == result.aborted
        assert [d["step"] for d in view["devices"]] == ["canary"]
        html = _render_rollout(view)
        assert "a wave of the rollout to group:field: canary 1 (canary: d1)" in html
        assert "aborted: canary failed: d1 (failed: health_check" in html
        assert "<b>d1</b> (canary)" in html
    finally:
        fleet.registry.close()


def test_the_rollouts_page_shows_canary_waves_steps_and_failures(
    pushed: Fleet, tmp_path: Path, store: Path
) -> None:
    live = LiveFleet(Settings(state_dir=tmp_path / "state", db=store), render=lambda *_: "")
    live.fleet = pushed
    live.refresh()
    dash = Dashboard(live, Users(tmp_path / "users.json"), Policy(login_to_view=False))
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(dash.app, port=port, log_level="error", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        status, _, body = _request(f"http://127.0.0.1:{port}/rollouts")
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        dash.audit.close()
    assert status == 200
    assert "canary 1 · waves 2, 1 · max failures 50 %" in body
    assert 'data-device="d4" data-phase="active" data-step="wave 2"' in body
    assert "<b>d3</b> (wave 1)" in body
    assert HEALTH in body
    assert "<th>Canary / waves</th>" in body


# -- thumbnails (device side) and the wire ----------------------------------------------------


GPR = PreprocessSpec.model_validate(
    {"kind": "gpr", "height": 64, "width": 64, "channels": 1, "scale": "unit"}
)


class _Model:
    def __init__(self, spec: PreprocessSpec) -> None:
        self.preprocess_spec = spec


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_a_gpr_scan_becomes_a_small_radargram_png(tmp_path: Path) -> None:
    scan = np.load(GPR_SCAN)
    fmt, data = encode_thumbnail(scan)
    assert fmt == "png"
    assert len(data) <= MAX_THUMBNAIL_BYTES
    rgb = _pixels(data)
    traces, samples = scan.shape
    assert rgb.shape[:2] == (samples, traces)  # time down the rows, one column per trace
    red = (rgb[..., 0] > 200) & (rgb[..., 2] < 120)
    blue = (rgb[..., 2] > 200) & (rgb[..., 0] < 120)
    assert red.any()  # the hyperbola's positive lobe ...
    assert blue.any()  # ... and its negative one: a diverging radargram colormap
    # The PNG rendering of the same scan draws the same picture (mu-law expanded first).
    _, again = encode_thumbnail(render_png(scan))
    assert np.abs(_pixels(again).astype(int) - rgb.astype(int)).mean() < 20


def test_a_large_noisy_input_still_fits_in_8_kib() -> None:
    noise = np.random.default_rng(0).normal(size=(2000, 1500)).astype(np.float32)
    fmt, data = encode_thumbnail(noise)
    assert len(data) <= MAX_THUMBNAIL_BYTES
    assert max(Image.open(io.BytesIO(data)).size) <= 128
    assert fmt in ("png", "jpeg")


def test_thumbnails_are_opt_in_and_never_cost_the_prediction() -> None:
    scan = np.load(GPR_SCAN)
    assert thumbnail_for(scan, _Model(GPR), InferenceConfig()) is None  # default off
    on = InferenceConfig(thumbnails=True)
    thumb = thumbnail_for(scan, _Model(GPR), on)
    assert thumb is not None
    assert thumb.format == "png"
    # Something that cannot be drawn: no thumbnail, no exception.
    assert thumbnail_for(np.zeros((2, 2, 2, 2)), _Model(GPR), on) is None
    assert thumbnail_for(np.array([[np.nan, 1.0]]), _Model(GPR), on) is None
    # An image model's grey input is a grey picture, not a radargram.
    image = PreprocessSpec.model_validate(
        {"kind": "image", "height": 28, "width": 28, "channels": 1}
    )
    digit = np.zeros((28, 28), np.uint8)
    digit[8:20, 12:16] = 255
    grey = thumbnail_for(digit, _Model(image), on)
    assert grey is not None
    assert (grey.width, grey.height) == (28, 28)
    rgb = _pixels(grey.data)
    assert (rgb[..., 0] == rgb[..., 2]).all()
    assert rgb[10, 13].tolist() == [255, 255, 255]


def test_a_thumbnail_message_round_trips_within_the_limits() -> None:
    picture = thumbnail_for(np.load(GPR_SCAN), _Model(GPR), InferenceConfig(thumbnails=True))
    assert picture is not None
    message = picture.message(device_id="pi-1", boot_id="b1", seq=7)
    payload = encode(message)
    assert len(payload) < 12 * 1024
    back = decode(InputThumbnail, payload)
    assert back == message
    assert back.data() == picture.data
    assert (back.width, back.height) == (picture.width, picture.height)
    keys = {"device_id": "pi-1", "boot_id": "b1", "seq": 1, "format": "png", "width": 1}
    too_big = {**keys, "height": 1, "data_b64": "A" * 10_928}
    with pytest.raises(ValueError, match="10924"):
        InputThumbnail.model_validate(too_big)
    not_base64 = {**keys, "height": 1, "data_b64": "not base64!"}
    with pytest.raises(ValueError, match="not base64"):
        InputThumbnail.model_validate(not_base64)
    with pytest.raises(ValueError, match="height"):
        InputThumbnail.model_validate({**keys, "data_b64": png_b64()})


def test_the_protocol_doc_vector_for_thumbnails_decodes() -> None:
    doc = (ROOT / "docs" / "protocol.md").read_text()
    marker = "<!-- vector:input-thumbnail -->"
    assert marker in doc
    block = doc[doc.index(marker) :].split("```")[1].strip()
    thumb = decode(InputThumbnail, block.encode())
    image = Image.open(io.BytesIO(thumb.data()))
    assert image.format == "PNG"
    assert image.size == (thumb.width, thumb.height) == (2, 2)


# -- a served dashboard, plain HTTP ---------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *_: Any, **__: Any) -> None:
        return None


def _request(
    url: str, data: dict[str, str] | None = None, cookie: str = ""
) -> tuple[int, Any, str]:
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    headers = {"cookie": cookie} if cookie else {}
    req = urllib.request.Request(url, data=body, headers=headers)  # noqa: S310 - http://127.0.0.1
    opener = urllib.request.build_opener(_NoRedirect())
    try:
        with opener.open(req, timeout=10) as r:
            return r.status, r.headers, r.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read().decode(errors="replace")


@pytest.fixture
def served(tmp_path: Path, store: Path):
    """The Starlette app under uvicorn, without MQTT (the live fleet is not started)."""
    users = Users(tmp_path / "users.json")
    users.add("op", "long enough")
    live = LiveFleet(Settings(state_dir=tmp_path / "state", db=store), render=lambda *_: "")
    dash = Dashboard(live, users, Policy(login_to_view=False))
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(dash.app, port=port, log_level="error", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
    dash.audit.close()


def test_pages_are_read_only_and_carry_security_headers(served: str) -> None:
    status, headers, body = _request(served + "/predictions?label=metal")
    assert status == 200
    assert "default-src 'self'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY"
    assert "HttpOnly" in headers["set-cookie"]
    assert "SameSite=strict" in headers["set-cookie"]
    assert "Secure" not in headers["set-cookie"]  # plain HTTP on loopback
    assert body.count('id="pred-') == 3
    assert "Log in" in body
    status, headers, _ = _request(served + "/thumbnails/9")
    assert (status, headers["content-type"]) == (200, "image/png")
    assert _request(served + "/thumbnails/8")[0] == 404
    bad = _request(served + "/predictions?min_score=lots")
    assert bad[0] == 200
    assert "is not a number" in bad[2]


def test_login_and_actions_refuse_without_session_password_or_csrf(served: str) -> None:
    assert _request(served + "/actions/cancel", {"target": "group:x"})[0] == 401
    # The login form's token is bound to the pre-session cookie it came with.
    status, headers, body = _request(served + "/login")
    pre = headers["set-cookie"].split(";")[0]
    csrf = body.split('name="csrf" value="')[1].split('"')[0]
    form = {"user": "op", "password": "long enough", "next": "/rollouts"}
    assert _request(served + "/login", form)[0] == 403  # no token
    assert _request(served + "/login", form | {"csrf": csrf})[0] == 403  # no cookie
    wrong = _request(served + "/login", form | {"csrf": csrf, "password": "nope"}, pre)
    assert wrong[0] == 401
    assert "efd_session" not in (wrong[1].get("set-cookie") or "")
    status, headers, _ = _request(served + "/login", form | {"csrf": csrf, "next": "//evil"}, pre)
    assert (status, headers["location"]) == (303, "/")  # no open redirect
    session = headers["set-cookie"].split(";")[0]
    assert session.startswith("efd_session=")
    assert _request(served + "/actions/cancel", {"target": "group:x"}, session)[0] == 403


def test_over_tls_from_the_fleet_ca_every_page_needs_a_login(tmp_path: Path, store: Path) -> None:
    fleet = tmp_path / "fleet"
    config = init_fleet(fleet, name="dash-test")
    tls = fleet_ca_certificate(fleet, "127.0.0.1")
    assert tls.key.stat().st_mode & 0o777 == 0o600
    assert fleet_ca_certificate(fleet, "127.0.0.1") == tls  # reused while valid
    users = Users(tmp_path / "users.json")
    users.add("op", "long enough")
    _, _, policy = check_listen("0.0.0.0:8443", tls=tls, users=users)
    live = LiveFleet(Settings(state_dir=tmp_path / "state", db=store), render=lambda *_: "")
    dash = Dashboard(live, users, policy)
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            dash.app,
            port=port,
            log_level="error",
            lifespan="off",
            ssl_certfile=str(tls.cert),
            ssl_keyfile=str(tls.key),
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        # The fleet CA verifies the dashboard's certificate for 127.0.0.1.
        context = ssl.create_default_context(cafile=str(config.resolve(config.ca_file)))
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
        conn.request("GET", "/predictions")
        response = conn.getresponse()
        assert response.status == 303  # to the login page: nothing is readable without it
        assert response.getheader("location") == "/login?next=/predictions"
        response.read()
        conn.request("GET", "/login")
        response = conn.getresponse()
        assert response.status == 200
        assert "Secure" in (response.getheader("set-cookie") or "")
        response.read()
        conn.request("GET", "/thumbnails/9")
        assert conn.getresponse().status == 303
        conn.close()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        dash.audit.close()

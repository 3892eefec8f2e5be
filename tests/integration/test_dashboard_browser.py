"""The web dashboard in a real browser: Debian's chromium, headless, driven by Selenium.

One module-wide setup (it is the slow part): a real mosquitto, three real agents with input
thumbnails on, ``edgefleet dashboard --ingest`` as a child process, one browser. The tests
then use the dashboard the way an operator does and check what a bug would break: rows and
progress bars change in an open page without reload, the thumbnail's pixels are a radargram
or an image (not a broken tag), actions are refused without login, with a wrong password and
without the CSRF token. Each page is saved as a screenshot in build/screenshots/ (the README
shows the demo's).
"""

from __future__ import annotations

import http.cookiejar
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from edgefleet.shared.manifest import private_key_pem
from edgefleet.shared.messages import Status, encode
from edgefleet.shared.topics import Topics
from support.agent import (
    AgentProcess,
    ModelBundle,
    Signer,
    mnist_eval_pngs,
    shared_mnist_model,
    write_agent_config,
)
from support.broker import free_port
from support.chromium import headless_chromium

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.browser]

ROOT = Path(__file__).resolve().parents[2]
# Screenshots go to build/screenshots (ignored by git), or EDGEFLEET_SCREENSHOTS if set.
SHOTS = Path(os.environ.get("EDGEFLEET_SCREENSHOTS", ROOT / "build" / "screenshots"))
DEVICES = ("pi-north", "pi-south", "truck-07")
PASSWORD = "correct horse battery"  # noqa: S105 - a throwaway test account


def _cli(*args: str, **kwargs: Any) -> list[str]:
    return [sys.executable, "-c", "from edgefleet.host.cli import main; main()", *args]


def _wait(what: str, check: Callable[[], Any], timeout: float = 30.0, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except (StaleElementReferenceException, NoSuchElementException):
            # A live update replaced the element between find and read, or a form post is
            # still navigating and the new page has no body yet.
            value = None
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _browser(profile: Path) -> Any:
    driver = headless_chromium(profile, extra_flags=("--disable-dev-shm-usage",))
    driver.set_page_load_timeout(30)
    return driver


@dataclass
class Env:
    url: str
    broker: str
    prefix: str
    state: Path
    key: Path
    model: ModelBundle
    root: Path
    agents: dict[str, AgentProcess]
    driver: Any

    @property
    def common(self) -> list[str]:
        return ["--broker", self.broker, "--prefix", self.prefix, "--state-dir", str(self.state)]

    def open(self, path: str) -> None:
        self.driver.get(self.url + path)

    def shot(self, name: str) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        self.driver.save_screenshot(str(SHOTS / f"dashboard-{name}.png"))

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def post(self, path: str, fields: dict[str, str], cookies: dict[str, str] | None = None) -> int:
        """POST a form outside the browser (with the browser's cookies if given)."""
        request = urllib.request.Request(  # noqa: S310 - http://127.0.0.1
            self.url + path, data=urllib.parse.urlencode(fields).encode(), method="POST"
        )
        if cookies:
            request.add_header("cookie", "; ".join(f"{k}={v}" for k, v in cookies.items()))
        opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()), _NoRedirect()
        )
        try:
            with opener.open(request, timeout=10) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return exc.code


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *_: Any, **__: Any) -> None:
        return None


@pytest.fixture(scope="module")
def env(broker, tmp_path_factory) -> Iterator[Env]:
    model = shared_mnist_model(tmp_path_factory)
    root = tmp_path_factory.mktemp("dashboard")
    prefix = f"dash-{os.getpid()}-{int(time.time())}"
    signer = Signer(root / "keys")
    key = root / "signing.key"
    key.write_bytes(private_key_pem(signer.key))
    state = root / "state"
    agents: dict[str, AgentProcess] = {}
    procs: list[subprocess.Popen[bytes]] = []
    driver = None
    try:
        for i, device in enumerate(DEVICES):
            config = write_agent_config(
                root / device,
                device_id=device,
                broker_url=broker.url,
                prefix=prefix,
                keys=[signer.public_path],
                groups=["north" if i == 0 else "south", "field"],
                watch_dir=root / device / "inbox",
                extra="thumbnails = true\n",  # still in the [inference] table
            )
            agents[device] = AgentProcess(config)
        common = ["--broker", broker.url, "--prefix", prefix, "--state-dir", str(state)]
        added = subprocess.run(
            _cli("dashboard", *common, "--add-user", "operator", "--password-stdin"),
            input=f"{PASSWORD}\n".encode(),
            capture_output=True,
            check=False,
        )
        assert added.returncode == 0, added.stderr.decode()
        assert (state / "dashboard-users.json").stat().st_mode & 0o777 == 0o600
        port = free_port()
        log = (root / "dashboard.log").open("wb")
        procs.append(
            subprocess.Popen(
                _cli(
                    "dashboard",
                    *common,
                    "--key",
                    str(key),
                    "--listen",
                    f"127.0.0.1:{port}",
                    "--ingest",
                ),
                stdout=log,
                stderr=log,
            )
        )
        url = f"http://127.0.0.1:{port}"
        _wait("the dashboard to answer", lambda: _answers(url), timeout=60, every=0.3)
        driver = _browser(root / "chromium-profile")
        yield Env(url, broker.url, prefix, state, key, model, root, agents, driver)
    finally:
        if driver is not None:
            driver.quit()
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=20)
        for agent in agents.values():
            agent.stop()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/static/dashboard.css", timeout=2):  # noqa: S310 - http
            return True
    except OSError:
        return False


def _rows(env: Env) -> dict[str, str]:
    return env.js(
        "const o = {}; document.querySelectorAll('#devices tr').forEach("
        "r => { if (!r.hidden) o[r.id.slice(4)] = r.dataset.state; }); return o;"
    )


def test_the_fleet_page_lists_three_devices_and_filters_them(env: Env) -> None:
    env.open("/")
    _wait("three online rows", lambda: _rows(env) == dict.fromkeys(DEVICES, "online"))
    # Agent version and memory come from the heartbeat: a row carries more than the id.
    text = env.js("return document.getElementById('dev-truck-07').innerText;")
    assert "0.2.0" in text
    assert "field" in text
    Select(env.driver.find_element(By.ID, "f-group")).select_by_visible_text("north")
    assert _rows(env) == {"pi-north": "online"}
    Select(env.driver.find_element(By.ID, "f-state")).select_by_visible_text("offline")
    assert _rows(env) == {}


def test_a_cli_push_shows_progress_and_ends_active_without_reload(env: Env) -> None:
    env.open("/")
    _wait("rows", lambda: len(_rows(env)) == len(DEVICES))
    env.open("/rollouts")
    env.js("window.__noReload = true; window.__phases = new Set();")
    # Record every phase the page shows as the events replace the progress rows.
    env.js(
        "setInterval(() => document.querySelectorAll('tr.dev').forEach("
        "r => window.__phases.add(r.dataset.phase)), 50);"
    )
    push = subprocess.Popen(
        _cli("push", str(env.model.path), "--group", "field", *env.common, "--key", str(env.key))
    )
    try:
        assert push.wait(timeout=120) == 0

        def all_active() -> bool:
            phases = env.js(
                "return Array.from(document.querySelectorAll('[id$=\"-body\"] tr.dev'))"
                ".map(r => r.dataset.device + ':' + r.dataset.phase);"
            )
            return sorted(phases) == sorted(f"{d}:active" for d in DEVICES)

        _wait("every device active on the open page", all_active, timeout=90)
    finally:
        if push.poll() is None:
            push.kill()
    assert env.js("return window.__noReload === true;"), "the page was reloaded"
    # The page went through the update's steps on its own, not straight to the end.
    seen = set(env.js("return Array.from(window.__phases);"))
    assert seen & {"pending", "downloading", "verifying", "health_check", "activating"}, seen
    text = env.js("return document.getElementById('rollouts').innerText;")
    assert "3/3 active" in text
    assert "complete" in text
    env.shot("rollouts")
    # The fleet page now shows the model and its build on every row, live.
    env.open("/")
    _wait(
        "model on every row",
        lambda: all(
            "mnist_tiny v1" in env.driver.find_element(By.ID, f"dev-{d}").text for d in DEVICES
        ),
    )
    env.shot("fleet")


def test_a_prediction_with_a_thumbnail_appears_live_and_its_image_renders(env: Env) -> None:
    env.open("/rollouts")
    _wait(
        "the model active everywhere",
        lambda: "3/3 active" in env.driver.find_element(By.ID, "rollouts").text,
        timeout=120,
    )
    env.open("/predictions")
    env.js("window.__noReload = true;")
    before = env.js("return document.querySelectorAll('#feed tr').length;")
    mnist_eval_pngs(env.root / "pi-north" / "inbox", 6)
    _wait(
        "six new rows in the live feed",
        lambda: env.js("return document.querySelectorAll('#feed tr').length;") >= before + 6,
        timeout=60,
    )
    assert env.js("return window.__noReload === true;")
    img = _wait(
        "a loaded thumbnail",
        lambda: env.js(
            "const i = document.querySelector('#feed img.thumb');"
            "return i && i.complete && i.naturalWidth > 0 ? i : null;"
        ),
    )
    # Pixels, not just the tag: draw the decoded image and look at its colours.
    stats = env.js(
        "const i = arguments[0], c = document.createElement('canvas');"
        "c.width = i.naturalWidth; c.height = i.naturalHeight;"
        "const g = c.getContext('2d'); g.drawImage(i, 0, 0);"
        "const d = g.getImageData(0, 0, c.width, c.height).data; const s = new Set();"
        "let dark = 0; for (let k = 0; k < d.length; k += 4) {"
        "  s.add(d[k] + ',' + d[k+1] + ',' + d[k+2]); if (d[k] < 60) dark++; }"
        "return {w: c.width, h: c.height, colours: s.size, dark: dark};",
        img,
    )
    assert (stats["w"], stats["h"]) == (28, 28), stats
    assert stats["colours"] >= 10, stats  # a digit: many grey levels, not one flat colour
    assert 0 < stats["dark"] < 28 * 28, stats
    counts = env.driver.find_element(By.ID, "stats").text
    assert "Per class" in counts
    env.shot("predictions")
    env.driver.find_element(By.CSS_SELECTOR, "#feed tr a").click()
    scan = _wait(
        "the scan on the record page",
        lambda: env.js(
            "const i = document.getElementById('scan');"
            "return i && i.complete && i.naturalWidth > 0;"
        ),
    )
    assert scan
    assert "Top-k" in env.driver.page_source
    env.shot("prediction")
    env.open("/devices/pi-north")
    _wait("its predictions", lambda: env.js("return document.querySelectorAll('#feed tr').length;"))
    assert "Status history" in env.driver.page_source
    env.shot("device")


def test_actions_need_a_login_the_right_password_and_the_csrf_token(env: Env) -> None:
    # Anonymous: refused, whatever the form says.
    assert env.post("/actions/cancel", {"target": "group:field", "csrf": "x"}) == 401
    env.open("/rollouts")
    assert not env.driver.find_elements(By.CSS_SELECTOR, "form[action='/actions/cancel']")
    # A wrong password: refused, no session.
    env.open("/login?next=/rollouts")
    env.driver.find_element(By.NAME, "user").send_keys("operator")
    env.driver.find_element(By.NAME, "password").send_keys("not the password")
    env.driver.find_element(By.CSS_SELECTOR, "form.login button").click()
    _wait("the refusal", lambda: "wrong user name or password" in env.driver.page_source)
    assert env.driver.get_cookie("efd_session") is None
    env.shot("login")
    # The right one: a session cookie that scripts cannot read.
    env.driver.find_element(By.NAME, "user").send_keys("operator")
    env.driver.find_element(By.NAME, "password").send_keys(PASSWORD)
    env.driver.find_element(By.CSS_SELECTOR, "form.login button").click()
    _wait("the rollouts page", lambda: env.driver.current_url.endswith("/rollouts"))
    session = env.driver.get_cookie("efd_session")
    assert session is not None
    assert session["httpOnly"] is True
    assert session["sameSite"] == "Strict"
    assert env.js("return document.cookie.includes('efd_session');") is False
    # Logged in, but a POST without the CSRF token (or with another one) is refused.
    cookies = {c["name"]: c["value"] for c in env.driver.get_cookies()}
    assert env.post("/actions/cancel", {"target": "group:field"}, cookies) == 403
    assert env.post("/actions/cancel", {"target": "group:field", "csrf": "0" * 64}, cookies) == 403
    # The page's own form works: cancel the group's rollout, and the audit log says so.
    env.driver.find_element(By.CSS_SELECTOR, "form[action='/actions/cancel'] button").click()
    _wait("the result", lambda: "cancelled" in env.driver.find_element(By.TAG_NAME, "main").text)
    audit = env.driver.find_element(By.XPATH, "//h2[text()='Audit log']/following-sibling::table")
    assert "operator" in audit.text
    assert "cancel" in audit.text
    assert "wrong user or password" in audit.text
    # Push the registry's model to the group again from the page: a new version, live progress.
    env.driver.find_element(By.CSS_SELECTOR, "form[action='/actions/push'] button").click()
    _wait("the push result", lambda: "pushed mnist_tiny v2" in env.driver.page_source)

    def v2_active() -> bool:
        text = env.driver.find_element(By.ID, "rollouts").text
        return "mnist_tiny v2" in text and "3/3 active" in text

    _wait("v2 active on every device", v2_active, timeout=90)
    # Roll back: the group has only ever had this one build, so it is refused, with the reason.
    env.driver.find_element(By.CSS_SELECTOR, "form[action='/actions/rollback'] button").click()
    _wait("the refusal", lambda: "no earlier model to return to" in env.driver.page_source)
    audit = env.driver.find_element(By.XPATH, "//h2[text()='Audit log']/following-sibling::table")
    assert "rollback" in audit.text
    assert "push" in audit.text
    env.shot("rollouts-logged-in")


def test_a_non_loopback_bind_without_tls_is_refused(env: Env) -> None:
    refused = subprocess.run(
        _cli("dashboard", *env.common, "--listen", f"0.0.0.0:{free_port()}"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 1
    assert "not a loopback address" in refused.stderr
    assert "needs TLS" in refused.stderr


def test_a_row_changes_within_a_second_of_a_status_message(env: Env) -> None:
    env.open("/")
    _wait("the rows", lambda: len(_rows(env)) >= len(DEVICES))
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"probe-{os.getpid()}")
    host, port = env.broker.removeprefix("mqtt://").split(":")
    client.connect(host, int(port))
    client.loop_start()
    topic = Topics(env.prefix).status("probe-7")
    try:
        for online in (True, False):
            status = Status(
                device_id="probe-7", online=online, agent_version="9.9.9", ts=time.time()
            )
            client.publish(topic, encode(status), qos=1).wait_for_publish(5)
            sent = time.monotonic()
            want = "online" if online else "offline"
            _wait(f"probe-7 {want}", lambda w=want: _rows(env).get("probe-7") == w, every=0.02)
            took = time.monotonic() - sent
            print(f"probe-7 {want}: row changed {took:.3f} s after the status message")
            assert took < 1.0, f"the row changed {took:.2f} s after the status message"
    finally:
        client.loop_stop()
        client.disconnect()

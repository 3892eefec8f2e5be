"""docs/agent.md's "A trial on your own machine", run command by command as documented.

The block between ``<!-- trial:begin -->`` and ``<!-- trial:end -->`` is the new user's
path of issue 18 (init, provision, broker, two local agents, quantize, push, predictions).
Each line runs through ``bash`` exactly as written, in a fresh folder that stands in for
the checkout's root (``host/`` links to the checkout's); a line ending in ``&`` runs in
the background, as in a shell. Only two things differ, both invisible to what is checked:
the broker's port (a free one instead of 8883, so parallel runs do not collide) and
``--runs 5`` added to ``quantize`` (fewer timing runs).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from support.broker import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).parents[2]
DOC = (ROOT / "docs" / "agent.md").read_text()


def trial_lines() -> list[str]:
    block = DOC[DOC.index("<!-- trial:begin -->") : DOC.index("<!-- trial:end -->")]
    (code,) = re.findall(r"```sh\n(.*?)```", block, re.DOTALL)
    return [ln for ln in code.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def _two_free_ports() -> int:
    for _ in range(50):
        port = free_port()
        if port < 65535:
            try:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise RuntimeError("no two adjacent free ports")


def test_the_block_is_the_documented_path():
    lines = trial_lines()
    text = "\n".join(lines)
    for step in (
        "edgefleet init",
        "edgefleet provision pi-001",
        "edgefleet provision pi-002",
        "mosquitto -c",
        "edgefleet-agent run --config devices/edgefleet-pi-001/agent.toml --state-dir",
        "edgefleet-agent run --config devices/edgefleet-pi-002/agent.toml --state-dir",
        "edgefleet push",
        "edgefleet predictions listen",
        "edgefleet predictions tail",
    ):
        assert step in text, step
    assert all("--dir " not in ln for ln in lines)  # one name for the fleet: --fleet


@pytest.fixture
def workdir():
    # Not under pytest's 0700 temp root: nothing here needs it, and the checkout is
    # usually traversable too.
    path = Path(tempfile.mkdtemp(prefix="edgefleet-trial-"))
    path.chmod(0o755)
    (path / "host").symlink_to(ROOT / "host")
    (path / "home").mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_the_documented_trial_runs_as_written(workdir: Path):
    port = _two_free_ports()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    env |= {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        "HOME": str(workdir / "home"),
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("XDG_DATA_HOME", None)
    background: list[tuple[str, subprocess.Popen[bytes]]] = []
    outputs: dict[str, str] = {}
    try:
        for n, line in enumerate(trial_lines()):
            command = line.replace("localhost:8883", f"localhost:{port}")
            if command.startswith("edgefleet quantize"):
                command += " --runs 5"
            if command.endswith("&"):
                log = (workdir / f"bg-{n}.log").open("wb")
                proc = subprocess.Popen(
                    ["bash", "-c", f"exec {command[:-1].strip()}"],
                    cwd=workdir,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
                log.close()
                background.append((command, proc))
                continue
            t0 = time.monotonic()
            outputs[line] = _run(command, workdir, env, background)
            print(f"{time.monotonic() - t0:6.1f} s  {command[:70]}")
        tail = outputs[next(k for k in outputs if k.startswith("edgefleet predictions tail"))]
        rows = [r for r in tail.splitlines() if "pi-00" in r]
        assert len(rows) == 20, tail
        assert {"pi-001", "pi-002"} <= set(tail.split())
        assert any(label in tail for label in ("concrete", "metal"))
        push = outputs[next(k for k in outputs if k.startswith("edgefleet push"))]
        assert "active" in push
    finally:
        logs = _stop(background, workdir)
    for command, _proc in background:
        if command.startswith("edgefleet-agent"):
            device = "pi-001" if "pi-001" in command else "pi-002"
            status = subprocess.run(
                [
                    "edgefleet-agent",
                    "status",
                    "--config",
                    f"devices/edgefleet-{device}/agent.toml",
                    "--state-dir",
                    f"devices/{device}",
                ],
                cwd=workdir,
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            state = json.loads(status.stdout)
            assert state["active"]["name"] == "gpr_convnet", logs
            assert state["outbox_depth"] == 0, logs
            assert len(list((workdir / "devices" / device / "inbox" / "processed").iterdir())) == 10


def _run(command: str, cwd: Path, env: dict[str, str], background) -> str:
    """Run one documented line; the tail line is retried until the records are in."""
    deadline = time.monotonic() + 90
    while True:
        result = subprocess.run(
            ["bash", "-c", command],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        out = result.stdout + result.stderr
        if not command.startswith("edgefleet predictions tail"):
            break
        if result.returncode == 0 and sum("pi-00" in r for r in out.splitlines()) >= 20:
            break
        if time.monotonic() > deadline:
            break
        time.sleep(1)
    dead = [c for c, p in background if p.poll() is not None]
    assert result.returncode == 0, f"{command}\n{out}\nstopped in the background: {dead}"
    assert not dead, f"background commands died: {dead}"
    return out


def _stop(background, workdir: Path) -> str:
    for _command, proc in reversed(background):
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for _command, proc in background:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return "\n".join(
        f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
        for p in sorted(workdir.glob("bg-*.log"))
    )

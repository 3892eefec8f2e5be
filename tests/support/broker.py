"""A real Mosquitto broker on a free loopback port, for tests.

Start it, kill it (SIGKILL or SIGTERM) and restart it on the same port; each broker
writes its own config, persistence and log into a temp directory.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path


def find_mosquitto() -> str:
    """Return the mosquitto binary or raise with how to install it."""
    for candidate in (
        shutil.which("mosquitto"),
        "/usr/sbin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ):
        if candidate and Path(candidate).is_file():
            return candidate
    msg = "mosquitto is not installed: run `sudo apt-get install mosquitto` (or `make test`)"
    raise RuntimeError(msg)


def free_port() -> int:
    """Ask the kernel for a free TCP port on loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    """Block until something accepts TCP connections on the port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    msg = f"nothing listens on {host}:{port} after {timeout} s"
    raise TimeoutError(msg)


class MosquittoBroker:
    """One mosquitto process with a config written to ``workdir``."""

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        extra_conf: str = "",
        persistence: bool = True,
    ) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.extra_conf = extra_conf
        self.persistence = persistence
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "mosquitto.log"

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def write_config(self) -> Path:
        conf = self.workdir / "mosquitto.conf"
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            # Started as root, mosquitto would drop to user "mosquitto", which cannot
            # write its persistence file into our temp dir: stay who we are.
            f"user {getpass.getuser()}",
            "max_inflight_messages 0",
            "max_queued_messages 100000",
            "max_queued_bytes 0",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.workdir}/",
            "autosave_interval 1",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
        ]
        conf.write_text("\n".join(lines) + "\n" + self.extra_conf)
        return conf

    def start(self, conf: Path | None = None) -> MosquittoBroker:
        conf = conf or self.write_config()
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [find_mosquitto(), "-c", str(conf)], stdout=log, stderr=log, cwd=self.workdir
        )
        log.close()
        try:
            wait_for_port(self.port)
        except TimeoutError as exc:
            self.stop()
            msg = f"mosquitto did not start; log:\n{self.log_path.read_text()}"
            raise RuntimeError(msg) from exc
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

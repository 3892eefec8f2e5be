"""A throwaway PostgreSQL cluster on a free loopback port, for tests (like ``broker.py``).

``initdb`` makes a cluster in a temp directory, ``pg_ctl`` starts it listening on
127.0.0.1 only (its Unix socket in the same directory), password authentication
(scram-sha-256) for the user ``edgefleet``; ``stop`` shuts it down and removes the directory.

The binaries come from Debian's ``postgresql`` package, which puts them in the versioned
``/usr/lib/postgresql/VERSION/bin`` (not on PATH); ``PG_BIN`` overrides the lookup.
PostgreSQL refuses to run as root: as root the cluster runs as the ``postgres`` system user
the package creates, through ``runuser``, and its directory belongs to that user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

from support.broker import free_port

USER = "edgefleet"
DATABASE = "edgefleet"


def find_pg_bin() -> Path:
    """The directory holding initdb and pg_ctl, or raise with how to install them."""
    if env := os.environ.get("PG_BIN"):
        return Path(env)
    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(on_path).resolve().parent
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if versions:
        return versions[-1].parent
    msg = (
        "PostgreSQL is not installed: run `sudo apt-get install postgresql` (or `make tools`); "
        "or set PG_BIN to the directory holding initdb and pg_ctl"
    )
    raise RuntimeError(msg)


class PostgresCluster:
    """One PostgreSQL server with its data, socket and log in a temp directory.

    Args:
        on_disk: Keep the data on disk (``$TMPDIR``), where fsync costs what it costs: for
            benchmarks. By default it goes to ``/dev/shm`` when there is one (tmpfs): tests
            start and clean up faster, and no test relies on surviving a power cut.
    """

    def __init__(self, *, on_disk: bool = False) -> None:
        self.bin = find_pg_bin()
        self.port = free_port()
        self.password = secrets.token_urlsafe(12)
        # Not under pytest's tmp_path: as root, the postgres user must reach the directory,
        # and pytest's base directory is private (0700) to root.
        shm = Path("/dev/shm")  # noqa: S108 - a private mkdtemp inside it
        base = None if on_disk or not (shm.is_dir() and os.access(shm, os.W_OK)) else shm
        self.root = Path(tempfile.mkdtemp(prefix="edgefleet-pg-", dir=base))
        self.data = self.root / "data"
        self.log_path = self.root / "postgres.log"
        self._as: list[str] = []
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        self.started = False

    @property
    def url(self) -> str:
        """A connection URL of the test database (with the password)."""
        return f"postgresql://{USER}:{self.password}@127.0.0.1:{self.port}/{DATABASE}"

    def url_for(self, database: str) -> str:
        """A connection URL of another database of this cluster."""
        return f"postgresql://{USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self._as, *args], capture_output=True, text=True, check=False, cwd=self.root
        )

    def start(self) -> PostgresCluster:
        if not self.data.exists():
            pwfile = self.root / "pw"
            pwfile.write_text(self.password + "\n")
            if self._as:
                shutil.chown(pwfile, "postgres")
            done = self._run(
                str(self.bin / "initdb"),
                "-D",
                str(self.data),
                "-U",
                USER,
                "--pwfile",
                str(pwfile),
                "--auth",
                "scram-sha-256",
                "--encoding",
                "UTF8",
                "--locale",
                "C",
                "--no-sync",
            )
            pwfile.unlink()
            if done.returncode != 0:
                msg = f"initdb failed:\n{done.stdout}\n{done.stderr}"
                raise RuntimeError(msg)
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} "
            f"-c unix_socket_directories={self.root} -c fsync=on -c max_connections=40 "
            "-c shared_buffers=32MB"
        )
        done = self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log_path),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )
        if done.returncode != 0:
            log = self.log_path.read_text() if self.log_path.exists() else ""
            msg = f"pg_ctl start failed:\n{done.stdout}\n{done.stderr}\n{log}"
            raise RuntimeError(msg)
        self.started = True
        try:
            self._createdb(DATABASE)
        except BaseException:
            self.stop("immediate")  # never leave a server running behind a failed start
            raise
        return self

    def _createdb(self, name: str) -> None:
        # The client binary, not psycopg: conftest imports this module in device-only
        # environments too, which have no psycopg.
        done = subprocess.run(
            [str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, name],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "PGPASSWORD": self.password},
        )
        if done.returncode != 0 and "already exists" not in done.stderr:
            msg = f"createdb {name} failed: {done.stderr}"
            raise RuntimeError(msg)

    def create_database(self, name: str) -> str:
        """Create another (empty) database; return its URL."""
        self._createdb(name)
        return self.url_for(name)

    def stop(self, mode: str = "fast") -> None:
        """Shut the server down (``fast``, or ``immediate``: as a crash would)."""
        if self.started:
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")
            self.started = False

    def remove(self) -> None:
        """Stop the server at once (its data is thrown away) and delete its directory."""
        self.stop("immediate")
        with contextlib.suppress(OSError):
            shutil.rmtree(self.root)

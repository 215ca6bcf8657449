"""A real PostgreSQL server for tests, started by the tests themselves: nothing else needs to run first.

:class:`PgServer` runs the Debian PostgreSQL server binaries (``initdb``, ``pg_ctl``; found under
``/usr/lib/postgresql/<version>/bin``, or ``$FACESEARCH_PG_BIN``, or ``pg_config --bindir``, or on
``PATH``) on a throwaway data directory:

* it listens on 127.0.0.1 only, on a free port picked at start (no Unix socket), and the only
  accepted logins are loopback TCP with scram-sha-256 and a random password (``pg_hba.conf``), so
  other users of the machine cannot use it;
* PostgreSQL refuses to run as root: when the tests run as root the data directory is owned by the
  ``postgres`` user and every server command runs through ``runuser -u postgres``;
* fsync stays on (durability is part of what the store tests claim), the rest is the default;
* ``initdb`` runs once per test process (a template cluster); each server is a copy of it;
* :meth:`PgServer.stop` stops it (``pg_ctl stop -m fast``) and deletes the directory;
  :meth:`PgServer.restart` / :meth:`PgServer.stop_only` + :meth:`PgServer.start_again` let a test take
  it down and bring it back on the same port with the same data.

Fixtures (import them into a test module with ``from tests.pg_fixtures import *``):

``pg_server``       one server for the test session (started on first use).
``pg_dsn``          a fresh, empty database on it for one test (dropped afterwards): tests never share data.
``pg_private``      a server of the test's own, for tests that stop or restart it.

Without the binaries the fixtures skip with the reason, which ``CI=true`` turns into a failure
(tests/conftest.py): CI cannot pass without having run the PostgreSQL tests. ``scripts/pg-dev.sh``
does the same by hand for development (``scripts/pg-dev.sh run -- CMD``).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

__all__ = ["PgServer", "find_pg_bin", "pg_dsn", "pg_private", "pg_server"]

PG_USER = "facesearch"
_RUN_AS = "postgres"  # the OS user the server runs as when the tests run as root


def find_pg_bin() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``: ``$FACESEARCH_PG_BIN`` when set (None if it lacks
    them), else the newest Debian ``/usr/lib/postgresql/*/bin``, ``pg_config --bindir``, or ``PATH``;
    None when there is none."""
    if os.environ.get("FACESEARCH_PG_BIN"):  # set: that folder or nothing (no silent fallback)
        chosen = Path(os.environ["FACESEARCH_PG_BIN"])
        return chosen if (chosen / "initdb").is_file() and (chosen / "pg_ctl").is_file() else None
    candidates: list[Path] = []
    debian = Path("/usr/lib/postgresql")
    if debian.is_dir():
        versions = [p for p in debian.iterdir() if p.name.isdigit()]
        candidates += [p / "bin" for p in sorted(versions, key=lambda p: int(p.name), reverse=True)]
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True).stdout
        candidates.append(Path(out.strip()))
    if (found := shutil.which("initdb")) is not None:
        candidates.append(Path(found).parent)
    return next((c for c in candidates if (c / "initdb").is_file() and (c / "pg_ctl").is_file()), None)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PgServer:
    """One PostgreSQL server on loopback in a temporary directory (see the module docstring)."""

    bin_dir: Path
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="facesearch-pg-")))
    port: int = 0
    password: str = field(default_factory=lambda: secrets.token_hex(16))
    running: bool = False

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://{PG_USER}:{self.password}@127.0.0.1:{self.port}/{dbname}"

    # -- commands ----------------------------------------------------------------------
    def _as_owner(self, argv: list[str]) -> list[str]:
        """Run ``argv`` as the server's OS user: ``postgres`` when we are root (PostgreSQL refuses root)."""
        return ["runuser", "-u", _RUN_AS, "--", *argv] if os.geteuid() == 0 else argv

    def _run(self, argv: list[str], timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(self._as_owner(argv), capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv)} exited {done.returncode}: {done.stdout}{done.stderr}\n{self.server_log()}"
            )
        return done

    def server_log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def init(self) -> PgServer:
        """``initdb`` a new cluster: superuser ``facesearch`` with a random password, scram on loopback only."""
        if os.geteuid() == 0:
            owner = pwd.getpwnam(_RUN_AS)
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
        self.root.chmod(0o700)
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        if os.geteuid() == 0:
            os.chown(pwfile, pwd.getpwnam(_RUN_AS).pw_uid, -1)
        try:
            self._run(
                [
                    str(self.bin_dir / "initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    PG_USER,
                    f"--pwfile={pwfile}",
                    "--auth-local=reject",
                    "--auth-host=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-instructions",
                ]
            )
        finally:
            pwfile.unlink(missing_ok=True)
        hba = self.data / "pg_hba.conf"  # loopback TCP only: nothing else may log in
        hba.write_text(
            "# written by tests/pg_fixtures.py: loopback only, scram-sha-256\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
            "host all all ::1/128 scram-sha-256\n"
        )
        return self

    def copy_of(self, template: PgServer) -> PgServer:
        """This server's cluster as a copy of ``template``'s (initdb'd, stopped): same password and settings."""
        if os.geteuid() == 0:
            owner = pwd.getpwnam(_RUN_AS)
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
        self.root.chmod(0o700)
        subprocess.run(["cp", "-a", str(template.data), str(self.data)], check=True)  # -a keeps owner and modes
        return self

    def start(self) -> PgServer:
        """Start on a free port (a few tries: another process may take the port first)."""
        last: Exception | None = None
        for _ in range(5):
            self.port = free_port()
            try:
                self._pg_ctl_start()
                return self
            except RuntimeError as err:
                last = err
                if "could not bind" not in self.server_log() and "already in use" not in self.server_log():
                    raise
        raise RuntimeError(f"PostgreSQL did not start on a free port after 5 tries: {last}")

    def _pg_ctl(self, *args: str) -> None:
        self._run([str(self.bin_dir / "pg_ctl"), *args, "-w", "-t", "60", "-D", str(self.data)])

    def _pg_ctl_start(self) -> None:
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories='' "
            "-c max_connections=200 -c shared_buffers=32MB"
        )
        self._pg_ctl("start", "-l", str(self.log_path), "-o", options)
        self.running = True

    def stop_only(self) -> None:
        """Stop the server, keeping its data (``start_again`` brings it back on the same port)."""
        if self.running:
            self._pg_ctl("stop", "-m", "fast")
            self.running = False

    def start_again(self) -> None:
        self._pg_ctl_start()

    def restart(self) -> None:
        """``pg_ctl restart -m fast``: every connection is dropped, the data kept, the port the same."""
        self._pg_ctl("restart", "-m", "fast", "-l", str(self.log_path))
        self.running = True

    def stop(self) -> None:
        """Stop the server and delete its directory."""
        try:
            self.stop_only()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def create_database(self, name: str) -> str:
        """A new empty database; returns its DSN."""
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


_TEMPLATES: dict[Path, PgServer] = {}  # bin dir -> an initdb'd cluster, never started: copied for each server


def start_pg() -> PgServer:
    """A started server, or a skip naming what is missing (a failure under CI=true).

    The first call runs ``initdb`` once into a template (a few seconds on a busy machine); every
    server is a copy of it (same password), so a test's private server starts in well under a second.
    """
    bin_dir = find_pg_bin()
    if bin_dir is None:
        pytest.skip(
            "PostgreSQL server binaries not found (initdb, pg_ctl): install Debian's postgresql package "
            "or set FACESEARCH_PG_BIN"
        )
    pytest.importorskip(
        "psycopg", reason="the PostgreSQL store needs the postgres extra (pip install -e '.[postgres]')"
    )
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(_RUN_AS)
        except KeyError:
            pytest.skip(f"running as root, and there is no {_RUN_AS!r} user to run PostgreSQL as")
    template = _TEMPLATES.get(bin_dir)
    if template is None or not template.data.is_dir():
        template = _TEMPLATES[bin_dir] = PgServer(bin_dir).init()
        atexit.register(shutil.rmtree, template.root, True)
    server = PgServer(bin_dir, password=template.password)
    atexit.register(_stop_quietly, server)  # a test process that ends early leaves no server running
    try:
        server.copy_of(template)
        return server.start()
    except BaseException:
        server.stop()
        raise


def _stop_quietly(server: PgServer) -> None:
    with contextlib.suppress(Exception):
        server.stop()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    server = start_pg()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_dsn(pg_server: PgServer) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    dsn = pg_server.create_database(name)
    try:
        yield dsn
    finally:
        pg_server.drop_database(name)


@pytest.fixture
def pg_private() -> Iterator[PgServer]:
    server = start_pg()
    try:
        yield server
    finally:
        server.stop()

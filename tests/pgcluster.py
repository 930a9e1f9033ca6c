"""A throwaway PostgreSQL server for tests that stop, restart or break the server.

Such tests must never touch the shared server the rest of the suite uses, so
:class:`PgCluster` runs ``initdb`` into a fresh temporary directory and starts
a private ``postgres`` on a free local port (trust auth, ``fsync=off``). It is
always stopped (``-m immediate``) and its directory removed by :meth:`destroy`,
which the context manager and the test fixtures call.

The same class runs the suite's own server (``tests/pgserver.py``): then it
lives on tmpfs when there is one, and :func:`reap_stale` removes the clusters
of test runs that died without stopping theirs (each cluster records the pid of
the process that owns it).

``initdb`` refuses to run as root, so when the tests run as root (as in this
sandbox and in CI) every server binary runs as the ``postgres`` OS user via
``runuser`` (or ``su``), and the data directory is handed to that user.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg

SERVER_USER = "postgres"  # the OS user the server runs as when we are root
SUPERUSER = "postgres"  # the database superuser initdb creates
OWNER_FILE = "owner.pid"  # the pid of the process that started the cluster


class PgClusterUnavailable(RuntimeError):
    """No usable PostgreSQL server binaries (or no way to run them) on this machine."""


def find_bindir() -> Path:
    """The newest ``/usr/lib/postgresql/<version>/bin`` with initdb and pg_ctl (or $PG_BINDIR)."""
    candidates: list[Path] = []
    if os.environ.get("PG_BINDIR"):
        candidates.append(Path(os.environ["PG_BINDIR"]))

    def version_of(path: str) -> float:
        try:
            return float(Path(path).parent.name)
        except ValueError:
            return 0.0

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version_of, reverse=True)
    candidates.extend(Path(p) for p in found)
    for bindir in candidates:
        if all((bindir / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return bindir
    raise PgClusterUnavailable(
        "no PostgreSQL server binaries (initdb, pg_ctl, postgres) under "
        "/usr/lib/postgresql/*/bin or $PG_BINDIR"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_server_user() -> Callable[[list[str]], list[str]]:
    """Wrap a command so that it runs as the server's OS user (unchanged when not root)."""
    if os.geteuid() != 0:
        return list
    try:
        pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise PgClusterUnavailable(
            f"running as root, and there is no {SERVER_USER!r} OS user to run initdb as"
        ) from None
    runuser = shutil.which("runuser") or next(
        (p for p in ("/usr/sbin/runuser", "/sbin/runuser") if os.path.exists(p)), None
    )
    if runuser:
        return lambda cmd: [runuser, "-u", SERVER_USER, "--", *cmd]
    su = shutil.which("su") or ("/bin/su" if os.path.exists("/bin/su") else None)
    if su:
        return lambda cmd: [su, SERVER_USER, "-s", "/bin/sh", "-c", shlex.join(cmd)]
    raise PgClusterUnavailable("running as root, and neither runuser nor su is available")


def tmpfs_dir(min_free: int = 1 << 30) -> Path | None:
    """``/dev/shm`` when it is a writable tmpfs with room to spare, else None."""
    shm = Path("/dev/shm")
    try:
        stat = os.statvfs(shm)
    except OSError:
        return None
    if not os.access(shm, os.W_OK | os.X_OK) or stat.f_bavail * stat.f_frsize < min_free:
        return None
    return shm


def _alive(pid: int) -> bool:
    """Whether a process *pid* exists (one we may not signal exists too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def reap_stale(base_dir: Path, prefix: str) -> list[Path]:
    """Stop and delete the clusters under *base_dir* whose owning process is gone.

    A test run killed before its session teardown (a hard timeout, ``kill -9``)
    leaves its server running; the next run cleans up after it. Only clusters
    that recorded an owner are considered, so a live run is never touched.
    """
    reaped: list[Path] = []
    for root in sorted(base_dir.glob(f"{prefix}*")):
        try:
            owner = int((root / OWNER_FILE).read_text().strip())
        except (OSError, ValueError):
            continue
        if _alive(owner):
            continue
        with contextlib.suppress(PgClusterUnavailable):
            PgCluster.adopt(root).destroy()
        shutil.rmtree(root, ignore_errors=True)
        reaped.append(root)
    return reaped


@dataclass(frozen=True)
class ClusterOptions:
    """How a :class:`PgCluster` is laid out and configured."""

    max_connections: int = 300
    startup_timeout: float = 60.0
    base_dir: Path | None = None  # where the cluster's directory goes (None: the temp dir)
    prefix: str = "tenantry-pgcluster-"
    locale: str = "C"
    settings: Mapping[str, str] = field(default_factory=dict)  # extra ``-c`` settings


class PgCluster:
    """``initdb`` + ``pg_ctl`` on a private directory and port.

    Usage::

        with PgCluster() as cluster:
            url = cluster.url("postgres")
            cluster.stop()
            cluster.start()
    """

    def __init__(
        self,
        options: ClusterOptions | None = None,
        *,
        root: Path | None = None,
    ) -> None:
        self.options = options or ClusterOptions()
        self.bindir = find_bindir()
        self.as_server_user = _as_server_user()
        self.as_root = os.geteuid() == 0
        self.max_connections = self.options.max_connections
        self.startup_timeout = self.options.startup_timeout
        self.port = 0
        if root is None:
            base = self.options.base_dir
            root = Path(tempfile.mkdtemp(prefix=self.options.prefix, dir=base))
            (root / OWNER_FILE).write_text(str(os.getpid()))
        self.root = root
        self.datadir = self.root / "data"
        self.logfile = self.root / "server.log"
        self.running = False
        self._initialised = False

    @classmethod
    def adopt(cls, root: Path) -> PgCluster:
        """A handle on a cluster that another process made under *root* (to stop it)."""
        cluster = cls(root=root)
        cluster._initialised = (root / "data" / "PG_VERSION").exists()
        return cluster

    # -- lifecycle -------------------------------------------------------------------
    def _run(self, *args: str, timeout: float = 120.0, check: bool = True) -> str:
        cmd = self.as_server_user(list(args))
        proc = subprocess.run(  # fixed binaries, our own arguments
            cmd,
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(cmd)} failed with {proc.returncode}:\n{proc.stdout}\n{proc.stderr}\n"
                f"--- server log ---\n{self.log_tail()}"
            )
        return proc.stdout + proc.stderr

    def init(self) -> None:
        if self._initialised:
            return
        if self.as_root:
            # The server user must own its data dir and be able to reach it.
            os.chmod(self.root, 0o755)  # a private temporary directory
            user = pwd.getpwnam(SERVER_USER)
            os.chown(self.root, user.pw_uid, user.pw_gid)
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.datadir),
            "--auth=trust",
            f"--username={SUPERUSER}",
            "--encoding=UTF8",
            f"--locale={self.options.locale}",
            "--no-sync",
        )
        self._initialised = True

    def _options(self) -> str:
        return " ".join(
            [
                f"-c port={self.port}",
                "-c listen_addresses=127.0.0.1",
                f"-c unix_socket_directories={self.root}",
                f"-c max_connections={self.max_connections}",
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
                "-c shared_buffers=32MB",
                *(f"-c {name}={value}" for name, value in self.options.settings.items()),
            ]
        )

    def start(self) -> None:
        """Start the server (initdb first if needed) and wait until it accepts connections."""
        self.init()
        if not self.port:
            self.port = free_port()
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.datadir),
            "-l",
            str(self.logfile),
            "-w",
            "-t",
            str(int(self.startup_timeout)),
            "-o",
            self._options(),
            "start",
            timeout=self.startup_timeout + 30,
        )
        self.running = True
        self.wait_ready()

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m <mode>`` (fast: abort sessions, clean shutdown)."""
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.datadir),
            "-m",
            mode,
            "-w",
            "stop",
            timeout=90,
        )
        self.running = False

    def restart(self, mode: str = "fast", down_for: float = 0.0) -> None:
        self.stop(mode)
        if down_for > 0:
            time.sleep(down_for)
        self.start()

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                with self.connect() as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError as exc:
                last = exc
                time.sleep(0.1)
        raise RuntimeError(f"server on port {self.port} not ready: {last}\n{self.log_tail()}")

    def _postmaster_pid(self) -> int | None:
        try:
            first = (self.datadir / "postmaster.pid").read_text().splitlines()[0]
            return int(first)
        except (OSError, ValueError, IndexError):
            return None

    def destroy(self) -> None:
        """Stop the server however it can be stopped, then delete every file of it."""
        try:
            if (self.datadir / "postmaster.pid").exists():
                try:
                    self.stop("immediate")
                except (RuntimeError, subprocess.TimeoutExpired):
                    pid = self._postmaster_pid()
                    if pid is not None:
                        with contextlib.suppress(ProcessLookupError, PermissionError):
                            os.kill(pid, signal.SIGKILL)
                        time.sleep(0.5)
        finally:
            self.running = False
            shutil.rmtree(self.root, ignore_errors=True)

    # -- access ------------------------------------------------------------------------
    def url(self, database: str = "postgres", driver: str = "postgresql+psycopg") -> str:
        return f"{driver}://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def connect(self, database: str = "postgres", **kwargs: Any) -> psycopg.Connection[Any]:
        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=SUPERUSER,
            dbname=database,
            autocommit=True,
            connect_timeout=5,
            **kwargs,
        )

    def create_database(self, name: str) -> str:
        """Create a database (with the ``tenantry`` schema, like the suite's template)."""
        with self.connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        with self.connect(name) as conn:
            conn.execute("CREATE SCHEMA IF NOT EXISTS tenantry")
        return self.url(name)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.logfile.read_text(errors="replace")
        except OSError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> PgCluster:
        try:
            self.start()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.destroy()

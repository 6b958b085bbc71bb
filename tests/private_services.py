"""A private Redis and a private PostgreSQL on spare loopback ports, for tests that stop and restart them.

The rest of the suite shares the machine's services (127.0.0.1:5432 and :6379); a test that pulls the plug
must never touch those. These servers live in a temporary directory, listen on 127.0.0.1 only, keep nothing
after the test, and can be stopped and started again on the same port as often as the test likes.

    with PrivateRedis() as redis, PrivatePostgres() as postgres:
        env = {"REDIS_URL": redis.url, "DATABASE_URL": postgres.url}
        redis.stop(); ...; redis.start()

PostgreSQL refuses to run as root: as root, its commands run as the `postgres` OS user (runuser) over a
directory handed to that user. `unavailable()` tells why a machine cannot run them, for a clean skip.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
POSTGRES_OS_USER = "postgres"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def postgres_bin_dir() -> Path | None:
    """The newest installed PostgreSQL's bin directory (Debian: /usr/lib/postgresql/<major>/bin)."""
    found = [Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin") if (Path(p) / "initdb").exists()]
    if found:
        return max(found, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def unavailable() -> str | None:
    """Why the private services cannot run here (a skip reason), or None when they can."""
    if not os.access(REDIS_SERVER, os.X_OK):
        return f"redis-server not found at {REDIS_SERVER} (apt-get install redis-server)"
    if postgres_bin_dir() is None:
        return "PostgreSQL server binaries (initdb, pg_ctl) not found (apt-get install postgresql)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser: PostgreSQL cannot be started as the postgres user"
    return None


class PrivateRedis:
    """redis-server on a spare port, no persistence; stop() and start() keep the port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="private-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self, timeout: float = 10) -> PrivateRedis:
        log = (self.dir / "redis.log").open("ab")
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.dir)],
            stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while not _listening(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"private redis did not start: {self.log()[-1000:]}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        """SIGTERM (Redis saves nothing: --save ""), then wait until the port is closed."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log(self) -> str:
        path = self.dir / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PrivateRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class PrivatePostgres:
    """A throwaway cluster (initdb, trust auth, user postgres) served by pg_ctl on a spare port."""

    def __init__(self, database: str = "portal") -> None:
        bin_dir = postgres_bin_dir()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL server binaries not found")
        self.bin = bin_dir
        self.port = free_port()
        self.database = database
        # Under /tmp itself (world-traversable), not under pytest's per-user 0700 tmp_path: the postgres user
        # must reach it.
        self.dir = Path(tempfile.mkdtemp(prefix="private-postgres-"))
        self.data = self.dir / "data"
        self.initialised = False

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{self.database}"

    def _run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin / argv[0]), *argv[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", POSTGRES_OS_USER, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False, cwd=self.dir)
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {done.stdout}\n{done.stderr}\n{self.log()}")
        return done

    def _init(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.dir, POSTGRES_OS_USER, POSTGRES_OS_USER)
        # fsync off: a test cluster has no data worth a disk flush, and initdb is several times faster.
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8")
        (self.data / "postgresql.auto.conf").write_text(
            f"port = {self.port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{self.dir}'\n"
            "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 50\n"
        )
        if os.geteuid() == 0:
            shutil.chown(self.data / "postgresql.auto.conf", POSTGRES_OS_USER, POSTGRES_OS_USER)
        self.initialised = True

    def start(self, timeout: float = 60) -> PrivatePostgres:
        if not self.initialised:
            self._init()
            self._run("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "postgres.log"), "-w", "start",
                      timeout=timeout)
            self._run("psql", "-h", str(self.dir), "-p", str(self.port), "-U", "postgres", "-d", "postgres",
                      "-q", "-c", f"CREATE DATABASE {self.database}")
            return self
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "postgres.log"), "-w", "start",
                  timeout=timeout)
        return self

    def stop(self) -> None:
        """Fast shutdown: open sessions are cut, as when the database server goes away."""
        if self.initialised and (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def log(self) -> str:
        path = self.dir / "postgres.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def close(self) -> None:
        try:
            self.stop()
        except (RuntimeError, subprocess.TimeoutExpired):
            self._run_quietly_immediate()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _run_quietly_immediate(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        except (RuntimeError, subprocess.TimeoutExpired):
            pass

    def __enter__(self) -> PrivatePostgres:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

"""A throwaway PostgreSQL server for tests and benchmarks: initdb into a temp folder, `postgres`
on a free loopback port, from the system's binaries (Debian: /usr/lib/postgresql/*/bin).

PostgreSQL refuses to run as root; as root the server runs as the `postgres` user the Debian
package creates. It is stopped by its process id, never by name.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.processes import free_port

USER = "recsys"


def binaries() -> Path | None:
    """The newest /usr/lib/postgresql/N/bin holding initdb and postgres (None if absent)."""
    found = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")
             if (Path(p).parent / "postgres").is_file()]
    found.sort(key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    return found[-1] if found else None


class TempPostgres:
    """One server: `start()`, `url(database)`, `create_database()`, `stop()`, `remove()`.

    `fsync=False` (the tests' default) still keeps every committed transaction through a crash of
    any process, the server's included; only an OS crash could lose one. Benchmarks pass True.
    """

    def __init__(self, *, fsync: bool = False) -> None:
        self.bin = binaries()
        if self.bin is None:
            raise RuntimeError("no PostgreSQL binaries in /usr/lib/postgresql/*/bin")
        self.fsync = fsync
        self.port = free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="recsys-pg-"))
        self.data = self.folder / "data"
        self.log = self.folder / "server.log"
        self.process: subprocess.Popen | None = None
        self._as = {}
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.folder, owner.pw_uid, owner.pw_gid)
            self._as = {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}
        subprocess.run([str(self.bin / "initdb"), "-D", str(self.data), "-U", USER,
                        "--auth=trust", "-E", "UTF8", "--no-sync"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=self.folder,
                       **self._as)

    def start(self, timeout: float = 30) -> None:
        import psycopg

        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port),
                 "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
                 "-c", f"fsync={'on' if self.fsync else 'off'}", "-c", "max_connections=200",
                 "-c", "shared_buffers=32MB"],
                stdout=log, stderr=log, start_new_session=True, cwd=self.folder, **self._as)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited: {self.log.read_text()[-2000:]}")
            try:
                psycopg.connect(self.url(), connect_timeout=1).close()
                return
            except psycopg.OperationalError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("postgres did not accept connections")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as db:
            db.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self, mode: int = signal.SIGINT) -> None:
        """SIGINT: fast shutdown (clients cut off, WAL flushed); SIGQUIT: immediate (a crash)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(mode)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

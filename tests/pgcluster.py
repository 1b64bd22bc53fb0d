"""A private PostgreSQL cluster for tests that stop or restart the server: initdb in a
temporary directory, a free loopback port, stopped and removed afterwards. The shared server
is never touched.

The server refuses to run as root, so as root the cluster runs as the `postgres` user.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def find_initdb() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found)
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    return Path(candidates[-1]) if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateCluster:
    def __init__(self, initdb: Path) -> None:
        self.bin = initdb.parent
        self.port = _free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="stepstone-pg-"))
        self.data = self.dir / "data"
        self._as: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.dir, user.pw_uid, user.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "--no-sync", "-E", "UTF8")
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run([*self._as, str(self.bin / tool), *args], check=True,
                       capture_output=True, timeout=120)

    def _ctl(self, action: str, *extra: str) -> None:
        options = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c max_connections=100")
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-w", "-t", "60",
                  "-l", str(self.dir / "server.log"), action, *extra)

    def start(self) -> None:
        self._ctl("start")

    def restart(self) -> None:
        self._ctl("restart", "-m", "fast")

    def halt(self) -> None:
        """Stop the server, keeping its data: `start()` brings the same database back."""
        self._ctl("stop", "-m", "fast")

    def stop(self) -> None:
        """Stop the server for good and remove its files."""
        try:
            with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
                self._ctl("stop", "-m", "immediate")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


@contextmanager
def private_cluster() -> Iterator[PrivateCluster]:
    """A started private cluster (skipped without initdb, except under CI=true)."""
    initdb = find_initdb()
    if initdb is None:
        if os.environ.get("CI") == "true":
            pytest.fail("initdb not found (CI=true: the tests that restart PostgreSQL must run)")
        pytest.skip("initdb not found: no private PostgreSQL cluster to stop and start")
    cluster = PrivateCluster(initdb)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()

"""A private PostgreSQL cluster for tests that stop or restart the server.

`initdb` in a temporary directory, listening on a free loopback port, owned by the `postgres`
system user (the server refuses to run as root). Nothing else shares it, so stopping it
disturbs no other test.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def _bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    def __init__(self, data: Path, port: int) -> None:
        self.data = data
        self.port = port
        self.url = f"postgresql://postgres@127.0.0.1:{port}/test"

    def _ctl(self, *args: str) -> None:
        ctl = _bin("pg_ctl")
        assert ctl is not None
        options = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1"
        cmd = [ctl, "-D", str(self.data), "-l", str(self.data / "server.log"), "-o", options,
               "-w", *args]
        subprocess.run(_as_postgres(cmd), check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        self._ctl("start")

    def stop(self) -> None:
        self._ctl("stop", "-m", "fast")


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@contextmanager
def private_cluster() -> Iterator[Cluster]:
    """A started cluster with a `test` database; stopped and removed afterwards."""
    initdb = _bin("initdb")
    if initdb is None:
        if os.environ.get("CI") == "true":
            pytest.fail("initdb is not installed (CI=true: a private cluster is required)")
        pytest.skip("initdb is not installed: no private PostgreSQL cluster")
    root = Path(tempfile.mkdtemp(prefix="stepstone-pg-"))
    data = root / "data"
    data.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(data, "postgres")
    subprocess.run(_as_postgres([initdb, "-D", str(data), "-A", "trust", "-U", "postgres"]),
                   check=True, capture_output=True, timeout=120)
    cluster = Cluster(data, _free_port())
    cluster.start()
    try:
        createdb = _bin("createdb")
        assert createdb is not None
        subprocess.run([createdb, "-h", "127.0.0.1", "-p", str(cluster.port), "-U", "postgres",
                        "test"], check=True, capture_output=True, timeout=60)
        yield cluster
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            cluster.stop()
        shutil.rmtree(root, ignore_errors=True)

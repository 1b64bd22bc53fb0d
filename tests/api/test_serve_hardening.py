"""`stepstone serve`'s refusals and limits, against real server processes.

Each refusal is exit 2 with one line saying what to change, before anything listens or is
created; the limits are measured from the outside with real sockets.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from world import Server, child_env, free_port

from engine import Engine, Settings

TOKEN = "hardening-token-0123456789"


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    Engine(Settings(database_url=url)).close()  # the store exists, as after any run
    return url


def serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`stepstone serve` expected to refuse: it must not get as far as serving."""
    full = {**child_env(), **(env or {})}
    if env is None or "STEPSTONE_API_TOKEN" not in env:
        full.pop("STEPSTONE_API_TOKEN", None)
    return subprocess.run([sys.executable, "-m", "stepstone", "serve", "--no-projector", *args],
                          capture_output=True, text=True, timeout=60, env=full)


@pytest.mark.parametrize("blank", ["", "   "])
def test_a_blank_token_refuses_to_start(sqlite_url: str, blank: str) -> None:
    r = serve("--db", sqlite_url, "--port", str(free_port()),
              env={"STEPSTONE_API_TOKEN": blank})
    assert r.returncode == 2, r.stderr
    assert "STEPSTONE_API_TOKEN is set but empty" in r.stderr


def test_listening_beyond_loopback_needs_a_token_or_the_insecure_flag(
    sqlite_url: str, tmp_path: Path
) -> None:
    r = serve("--db", sqlite_url, "--host", "0.0.0.0", "--port", str(free_port()))
    assert r.returncode == 2
    assert "refusing to listen on 0.0.0.0 without a token" in r.stderr
    assert "--insecure-no-token" in r.stderr
    server = Server(sqlite_url, tmp_path, extra=("--host", "0.0.0.0", "--insecure-no-token",
                                                 "--no-projector"))
    try:
        assert httpx.get(server.base + "/openapi.json").status_code == 200
    finally:
        assert server.stop() == 0
    assert "auth: off" in server.logs()


def test_startup_says_whether_auth_is_on(sqlite_url: str, tmp_path: Path) -> None:
    server = Server(sqlite_url, tmp_path, token=TOKEN, extra=("--no-projector",))
    try:
        assert httpx.get(server.base + "/runs").status_code == 401
    finally:
        assert server.stop() == 0
    logs = server.logs()
    assert "auth: on" in logs
    assert TOKEN not in logs


def test_a_store_that_does_not_exist_is_refused_and_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "stepstone.db"
    r = serve("--db", f"sqlite:///{missing}", "--port", str(free_port()))
    assert r.returncode == 2
    assert r.stderr.startswith("error: cannot serve")
    assert "no such file" in r.stderr
    assert not missing.exists()
    assert not any(tmp_path.iterdir())


def test_a_port_in_use_is_refused_before_startup(sqlite_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = serve("--db", sqlite_url, "--port", str(port))
    assert r.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in r.stderr
    assert "startup complete" not in r.stderr.lower()
    assert "serving http" not in r.stderr


def test_a_real_server_answers_only_its_own_host_names(sqlite_url: str, tmp_path: Path) -> None:
    server = Server(sqlite_url, tmp_path, extra=("--no-projector", "--allowed-host",
                                                 "stepstone.example"))
    try:
        port = server.port
        assert httpx.get(server.base + "/openapi.json",
                         headers={"Host": f"rebind.attacker.example:{port}"}).status_code == 400
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", "stepstone.example"):
            r = httpx.get(server.base + "/openapi.json", headers={"Host": host})
            assert r.status_code == 200, host
    finally:
        assert server.stop() == 0
    assert "answering to Host: localhost, 127.0.0.1, [::1], stepstone.example" in server.logs()


def test_idle_and_trickling_connections_are_bounded(sqlite_url: str, tmp_path: Path) -> None:
    """40 connections that never finish their headers, against a limit of 20 and a 1 s
    deadline: while they are open the server refuses more work (503) rather than queueing it,
    and each is closed within the deadline (plus scheduling slack), after which it serves."""
    server = Server(sqlite_url, tmp_path, extra=("--no-projector", "--max-connections", "20",
                                                 "--header-timeout", "1"))
    socks: list[socket.socket] = []
    try:
        opened = time.monotonic()
        for i in range(40):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            if i % 2:
                s.sendall(b"GET /runs HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # headers never end
            socks.append(s)
        refused = httpx.get(server.base + "/healthz")
        assert refused.status_code == 503
        closed_after = []
        for s in socks:
            s.settimeout(10)
            data = b""
            while chunk := s.recv(4096):
                data += chunk
            closed_after.append(time.monotonic() - opened)
            assert data == b"" or data.startswith(b"HTTP/1.1 408"), data
        assert max(closed_after) < 5, closed_after
        assert httpx.get(server.base + "/healthz").status_code == 200
    finally:
        for s in socks:
            s.close()
        assert server.stop() == 0, server.logs()

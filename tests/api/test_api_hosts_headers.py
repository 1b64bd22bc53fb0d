"""The browser-facing defences in the app: the Host check, security headers, refusals counted.

(`stepstone serve`'s own refusals and connection limits are in test_serve_hardening.py.)
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from world import World, client, client_for, world  # noqa: F401  (shared fixtures)

from api import ApiConfigError, allowed_hosts, create_app
from api.security import LOOPBACK_HOSTS
from api.settings import ApiSettings
from engine import Settings

REBIND = "rebind.attacker.example:18085"


def test_a_rebinding_host_is_refused_on_every_path(world: World) -> None:
    run = world.runs["completed"]
    with client_for(world.url, allowed_hosts=LOOPBACK_HOSTS) as c:
        for path in (f"/runs/{run}/events", "/runs", "/", "/docs", "/metrics", "/healthz"):
            r = c.get(path, headers={"Host": REBIND})
            assert r.status_code == 400, path
            assert str(run) not in r.text
        for host in ("localhost:18085", "127.0.0.1:18085", "[::1]:18085", "LOCALHOST"):
            assert c.get(f"/runs/{run}", headers={"Host": host}).status_code == 200, host
        assert c.get("/runs", headers={"Host": "localhost.attacker.example"}).status_code == 400


def test_the_hosts_answered_follow_the_bind_address() -> None:
    assert allowed_hosts("127.0.0.1") == list(LOOPBACK_HOSTS)
    assert allowed_hosts("localhost") == list(LOOPBACK_HOSTS)
    assert allowed_hosts("::1") == list(LOOPBACK_HOSTS)
    assert allowed_hosts("127.0.0.2") == [*LOOPBACK_HOSTS, "127.0.0.2"]
    assert allowed_hosts("192.0.2.7", ["Stepstone.Example"]) == ["192.0.2.7",
                                                                 "stepstone.example"]
    assert allowed_hosts("2001:db8::1") == ["[2001:db8::1]"]
    everywhere = allowed_hosts("0.0.0.0")
    assert set(LOOPBACK_HOSTS) <= set(everywhere)
    import socket

    assert socket.gethostname().lower() in everywhere
    assert allowed_hosts("127.0.0.1", ["*"])[-1] == "*"


@pytest.mark.parametrize("blank", ["", " ", "\t\n"])
def test_a_blank_token_is_a_configuration_error(blank: str, tmp_path: object) -> None:
    settings = Settings(database_url="sqlite:///nowhere.db")
    with pytest.raises(ApiConfigError, match="STEPSTONE_API_TOKEN is set but empty"):
        create_app(settings, api=ApiSettings(api_token=SecretStr(blank)))


def test_every_page_carries_the_security_headers(world: World, client: TestClient) -> None:
    for path in ("/", "/static/index.html", "/static/app.js", "/docs", "/runs", "/nowhere"):
        r = client.get(path)
        assert r.headers["x-content-type-options"] == "nosniff", path
        assert r.headers["x-frame-options"] == "DENY", path
        csp = r.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp, path
        assert "default-src 'none'" in csp, path
        assert "unsafe-inline" not in csp.split("script-src")[1].split(";")[0], path


def test_the_docs_page_loads_nothing_from_elsewhere(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    assert "cdn" not in page.text.lower()
    assert "//" not in page.text.replace("://", "")
    assert "/docs-assets/swagger-ui-bundle.js" in page.text
    bundle = client.get("/docs-assets/swagger-ui-bundle.js")
    assert bundle.status_code == 200
    assert len(bundle.content) > 500_000
    assert client.get("/docs-assets/swagger-ui.css").status_code == 200


def test_refused_requests_are_counted_in_metrics(world: World) -> None:
    with client_for(world.url, token="metrics-token") as c:
        for _ in range(3):
            assert c.get("/runs").status_code == 401
        assert c.get("/runs", headers={"Host": REBIND}).status_code == 400
        text = c.get("/metrics", headers={"Authorization": "Bearer metrics-token"}).text
    lines = [line for line in text.splitlines()
             if line.startswith("stepstone_api_request_duration_seconds_count")]
    assert any('status="401"' in line and line.endswith(" 3.0") for line in lines), lines
    assert any('status="400"' in line for line in lines), lines

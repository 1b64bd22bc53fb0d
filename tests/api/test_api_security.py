"""Read-only by construction, the token on every route, and hostile parameters.

Every route of the app is found from the app itself, so a route added later is covered too.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from starlette.routing import Mount, Route
from world import World, client, client_for, world  # noqa: F401  (shared fixtures)

from api.readonly_store import StoreReadError

TOKEN = "s3cret-token-that-must-not-leak"
INFINITE = {"/stream"}  # open-ended streams: checked against a live server in test_serve
HOSTILE = [
    "' OR 1=1 --", "'; DROP TABLE stored_events; --", '" OR ""="', "\x00", "%00",
    "../../etc/passwd",
    "<script>alert(1)</script>", "${jndi:ldap://x}", "\u202e\ufeff", "9" * 400, "-1", "1e309",
    "NaN", "a" * 5000, "[]", "{}", "true", "2026-13-45T99:99:99",
]
ABSURD = ["0", "-1", str(2**63), str(10**40), "999999999999999999999999999999"]


@pytest.fixture(scope="module")
def token_client(world: World) -> Iterator[TestClient]:
    with client_for(world.url, token=TOKEN) as c:
        yield c


def concrete_paths(client: TestClient, world: World, headers: dict[str, str]) -> list[str]:
    """Every path the app serves (the OpenAPI document's and the app's own), with a real run
    id where a route takes one."""
    run_id = world.runs["completed"]
    doc = client.get("/openapi.json", headers=headers).json()
    paths = list(doc["paths"])
    for route in client.app.routes:  # type: ignore[attr-defined]
        if isinstance(route, Mount):
            paths += ["/static/app.js", "/static/app.css", "/static/index.html"]
        elif isinstance(route, Route):
            paths.append(route.path)
    return sorted({p.replace("{run_id}", str(run_id)) for p in paths})


def fingerprint(world: World) -> tuple[int, str]:
    """Row count and checksum of the log and of every view table."""
    from api.queries import Reads
    from api.readonly_store import open_read_only
    from engine.storage import parse_store_url

    store = open_read_only(parse_store_url(world.url))
    try:
        reads = Reads(store)
        digest = hashlib.sha256()
        count = 0
        tables = [store.dialect.events_table, reads.runs, reads.attempts, reads.stats,
                  reads.hotspots, reads.tracking]
        for table in tables:
            rows = store.fetch(f"SELECT * FROM {table}")
            count += len(rows)
            for row in sorted(repr(r) for r in rows):
                digest.update(row.encode())
        return count, digest.hexdigest()
    finally:
        store.close()


# What a browser navigates to before it can send a header; none of it holds run data.
SHELL = {"/healthz", "/", "/docs", "/openapi.json", "/static/app.js", "/static/app.css",
         "/static/index.html", "/docs-assets/swagger-ui-bundle.js", "/vocabulary.json"}


def test_every_route_with_run_data_needs_the_token_in_a_header(
    world: World, token_client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    paths = concrete_paths(token_client, world, {"Authorization": f"Bearer {TOKEN}"})
    assert {"/docs", "/openapi.json", "/", "/metrics", "/readyz", "/stream"} <= set(paths)
    bodies = set()
    for path in paths:
        if path in SHELL:
            assert token_client.get(path).status_code == 200, path
            assert TOKEN not in token_client.get(path).text
            continue
        # A cookie is no way in: every server on this host would be sent it.
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"},
                        {"Authorization": f"Bearer {TOKEN}x"},
                        {"Cookie": f"stepstone_token={TOKEN}"}, {"Accept": "text/html"}):
            r = token_client.get(path, headers=headers)
            assert r.status_code == 401, (path, headers)
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert "set-cookie" not in r.headers
            bodies.add(r.content)
        if path in INFINITE:
            continue
        ok = token_client.get(path, headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200, (path, ok.text)
    assert len(bodies) == 1, "missing and wrong tokens must get the same answer"
    assert TOKEN not in caplog.text


def test_the_openapi_document_declares_the_bearer_scheme(token_client: TestClient) -> None:
    doc = token_client.get("/openapi.json").json()
    assert doc["components"]["securitySchemes"]["bearer"] == {"type": "http",
                                                               "scheme": "bearer"}
    assert doc["security"] == [{"bearer": []}]


def test_every_other_method_is_405(world: World, client: TestClient) -> None:
    for path in concrete_paths(client, world, {}):
        for method in ("POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"):
            r = client.request(method, path)
            assert r.status_code == 405, (method, path, r.status_code)
            assert set(r.json()) == {"detail"}
            assert "GET" in r.headers.get("allow", "GET")


def test_head_answers_without_a_body(world: World, client: TestClient) -> None:
    r = client.head(f"/runs/{world.runs['completed']}")
    assert r.status_code == 200
    assert r.content == b""


def parameters(client: TestClient) -> list[tuple[str, str, str]]:
    """(path template, parameter name, where) for every parameter in the OpenAPI document."""
    doc: dict[str, Any] = client.get("/openapi.json").json()
    out = []
    for path, item in doc["paths"].items():
        for param in item.get("get", {}).get("parameters", []):
            out.append((path, param["name"], param["in"]))
    return out


def test_hostile_and_absurd_parameters_never_reach_a_5xx_or_a_write(
    world: World, client: TestClient
) -> None:
    before = fingerprint(world)
    run_id = str(world.runs["completed"])
    params = parameters(client)
    assert {name for _, name, _ in params} >= {"status", "workflow", "cursor", "limit", "after",
                                                "run_id", "started_after", "started_before"}
    for template, name, where in params:
        for value in HOSTILE + ABSURD:
            if template == "/stream" or (template.endswith("/stream") and where == "query"):
                continue
            if where == "path":
                path, query = template.replace("{run_id}", quote(value, safe="")), {}
            else:
                path, query = template.replace("{run_id}", run_id), {name: value}
            r = client.get(path, params=query)
            assert r.status_code in (200, 404, 422), (template, name, value, r.status_code, r.text)
            assert "Traceback" not in r.text
            if r.status_code != 200:
                assert set(r.json()) == {"detail"}
                assert len(r.text) < 1000
    for path in ("/runs", f"/runs/{run_id}/steps", f"/runs/{run_id}/events", "/hotspots"):
        r = client.get(path, params={"limit": str(10**40)})
        assert r.status_code == 200
        assert len(r.json()["items"]) <= 1000
    assert fingerprint(world) == before


def test_the_api_connections_refuse_writes(world: World, client: TestClient) -> None:
    reads = client.app.state.reads  # type: ignore[attr-defined]
    before = fingerprint(world)
    for sql in (
        f"DELETE FROM {reads.store.dialect.events_table}",
        f"UPDATE {reads.runs} SET status = 'completed'",
        "CREATE TABLE intruder (x int)",
    ):
        with pytest.raises(StoreReadError, match=r"(?i)read.?only"):
            reads.store.fetch(sql)
    assert fingerprint(world) == before

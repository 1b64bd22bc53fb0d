"""`stepstone serve`: the read-only HTTP API and dashboard, with a projector keeping views fresh.

The API's own connections are read-only, so it cannot feed the views itself. By default this
command starts `stepstone projections run` as a child process with its own (writable)
connection and stops it on exit: one command gives a laptop user a live dashboard. A child
process rather than a thread, so the projector's batches never compete with requests for the
GIL, and a crash of one is visible without taking down the other. Where a projector already
runs (compose, several API replicas), `--no-projector` serves only.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import click
from pydantic import ValidationError

from engine import EngineError, Settings
from engine.storage import parse_store_url
from stepstone.common import fail, settings_error
from stepstone.extras import COMMAND_EXTRAS, missing


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to listen on (0.0.0.0 for every interface, e.g. in a container).")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.option("--db", "database_url", metavar="URL",
              help="Event store URL (default: STEPSTONE_DATABASE_URL, else sqlite:///stepstone.db).")
@click.option("--no-projector", is_flag=True,
              help="Do not start a projector: another process keeps the views up to date.")
@click.option("--allowed-host", "extra_hosts", multiple=True, metavar="NAME",
              help="Also answer to this Host name (a proxy's, a DNS name users reach it by); "
                   "repeatable; also STEPSTONE_API_ALLOWED_HOSTS (comma-separated).")
@click.option("--insecure-no-token", is_flag=True,
              help="Allow listening beyond loopback with no STEPSTONE_API_TOKEN: anyone who "
                   "can reach the port reads every run.")
@click.option("--max-connections", default=100, show_default=True, type=click.IntRange(1),
              help="Connections at once; requests beyond get 503.")
@click.option("--header-timeout", default=5.0, show_default=True,
              type=click.FloatRange(0.1), metavar="SECONDS",
              help="Time a client has to send a request's headers before it gets 408.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
def serve(host: str, port: int, database_url: str | None, no_projector: bool,
          extra_hosts: tuple[str, ...], insecure_no_token: bool, max_connections: int,
          header_timeout: float, log_level: str) -> None:
    """Serve the read-only progress API and dashboard (Ctrl-C or SIGTERM to stop).

    Set STEPSTONE_API_TOKEN to require `Authorization: Bearer <token>` on every route that
    reads runs. Only Host names the server is bound to (plus --allowed-host) are answered.
    """
    try:
        import uvicorn

        from api import ApiConfigError, ApiOptions, allowed_hosts, create_app
        from api.security import is_loopback
        from api.settings import ApiSettings
        from stepstone.http_limits import with_header_timeout
    except ImportError as e:
        missing(COMMAND_EXTRAS["serve"], "`stepstone serve`", e)

    try:
        settings = Settings(database_url=database_url) if database_url else Settings()
        location = parse_store_url(settings.database_url)
        if location.sqlite_path and not location.sqlite_path.exists():
            fail(f"cannot serve {location.display}: no such file {location.sqlite_path} "
                 "(nothing has run here yet; give --db the store your runs use)")
        api = ApiSettings()
        auth = api.api_token is not None
        if not auth and not is_loopback(host) and not insecure_no_token:
            fail(f"refusing to listen on {host} without a token: anyone who can reach it "
                 "would read every run. Set STEPSTONE_API_TOKEN, or pass --insecure-no-token "
                 "if something else guards the port")
        hosts = allowed_hosts(host, [*api.api_allowed_hosts, *extra_hosts])
        app = create_app(settings, ApiOptions(allowed_hosts=tuple(hosts)), api=api)
    except (EngineError, ApiConfigError) as e:
        fail(str(e))
    except ValidationError as e:
        fail(settings_error(e))
    # Bind before anything is started or announced, so a port in use is one clear error.
    try:
        listener = _listen(host, port)
    except OSError as e:
        fail(f"cannot listen on {host}:{port}: {e.strerror or e}")
    port = listener.getsockname()[1]
    projector = None if no_projector else _start_projector(settings)
    click.echo(f"serving http://{_url_host(host)}:{port}/ (API docs at /docs) over "
               f"{location.display}" + ("" if projector else "; views fed elsewhere"),
               err=True)
    click.echo("auth: on (a bearer token is required for run data)" if auth else
               "auth: off (no STEPSTONE_API_TOKEN)", err=True)
    click.echo(f"answering to Host: {', '.join(hosts)}", err=True)
    stopped_by: list[int] = []
    # uvicorn handles SIGTERM/SIGINT itself, then raises the signal again once it has shut
    # down, for the handler that was there before: this one, so that the projector child is
    # stopped too and the command ends with 0 instead of dying of its own signal.
    previous = {sig: signal.signal(sig, lambda signum, _: stopped_by.append(signum))
                for sig in (signal.SIGTERM, signal.SIGINT)}
    config = uvicorn.Config(app, log_level=log_level, proxy_headers=False,
                            http=with_header_timeout(header_timeout),
                            limit_concurrency=max_connections)
    try:
        uvicorn.Server(config).run(sockets=[listener])
    finally:
        listener.close()
        if projector is not None:
            _stop(projector)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _url_host(host: str) -> str:
    return f"[{host.strip('[]')}]" if ":" in host else host


def _start_projector(settings: Settings) -> subprocess.Popen[bytes]:
    # The URL goes through the environment, not argv: argv is visible to every local user.
    env = {**os.environ, "STEPSTONE_DATABASE_URL": settings.database_url}
    env.pop("STEPSTONE_API_TOKEN", None)  # the projector has no use for it
    return subprocess.Popen(
        [sys.executable, "-m", "stepstone", "projections", "run"], env=env
    )


def _stop(projector: subprocess.Popen[bytes]) -> None:
    if projector.poll() is None:
        projector.terminate()  # SIGTERM: it finishes the batch in flight and exits 0
        try:
            projector.wait(timeout=30)
        except subprocess.TimeoutExpired:
            projector.kill()
            projector.wait()

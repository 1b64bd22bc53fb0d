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
import subprocess
import sys

import click

from engine import EngineError, Settings
from stepstone.common import fail
from stepstone.extras import COMMAND_EXTRAS, missing


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to listen on (0.0.0.0 for every interface, e.g. in a container).")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.option("--db", "database_url", metavar="URL",
              help="Event store URL (default: STEPSTONE_DATABASE_URL, else sqlite:///stepstone.db).")
@click.option("--no-projector", is_flag=True,
              help="Do not start a projector: another process keeps the views up to date.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
def serve(host: str, port: int, database_url: str | None, no_projector: bool,
          log_level: str) -> None:
    """Serve the read-only progress API and dashboard (Ctrl-C or SIGTERM to stop).

    Set STEPSTONE_API_TOKEN to require `Authorization: Bearer <token>` on every route but
    /healthz.
    """
    try:
        import uvicorn

        from api import create_app
    except ImportError as e:
        missing(COMMAND_EXTRAS["serve"], "`stepstone serve`", e)

    try:
        settings = Settings(database_url=database_url) if database_url else Settings()
        app = create_app(settings)
    except EngineError as e:
        fail(str(e))
    projector = None if no_projector else _start_projector(settings)
    click.echo(f"serving http://{host}:{port}/ (API docs at /docs) over "
               f"{_display(settings)}" + ("" if projector else "; views fed elsewhere"),
               err=True)
    stopped_by: list[int] = []
    # uvicorn handles SIGTERM/SIGINT itself, then raises the signal again once it has shut
    # down, for the handler that was there before: this one, so that the projector child is
    # stopped too and the command ends with 0 instead of dying of its own signal.
    previous = {sig: signal.signal(sig, lambda signum, _: stopped_by.append(signum))
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level, proxy_headers=False)
    finally:
        if projector is not None:
            _stop(projector)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


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


def _display(settings: Settings) -> str:
    from engine.store_url import parse_store_url

    return parse_store_url(settings.database_url).display

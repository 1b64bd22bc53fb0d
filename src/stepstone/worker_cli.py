"""`stepstone worker`: a long-running process that drives runs other processes started."""

from __future__ import annotations

import importlib
import logging
import os
import sys

import click
from pydantic import ValidationError

from engine import (
    Engine,
    EngineError,
    PreemptionToken,
    Settings,
    signals_request_preemption,
)
from engine.logcontext import get_logger
from engine.schedules import declare_schedules
from engine.workers.worker import Worker
from stepstone.common import (
    EXIT_FORCED,
    fail,
    log_format_option,
    settings_error,
    setup_logging,
)
from stepstone.extras import OPTION_EXTRAS, missing

log = get_logger("stepstone.worker")


def _queue_limit(text: str) -> tuple[str, int]:
    name, sep, number = text.partition("=")
    if not sep or not name or not number.isdigit() or int(number) < 1:
        fail(f"--queue-limit {text!r} must look like NAME=N with N >= 1, e.g. etl=4")
    return name, int(number)


@click.command()
@click.option("--db", "database_url", metavar="URL",
              help="Event store URL (default: STEPSTONE_DATABASE_URL, else sqlite:///stepstone.db).")
@click.option("--concurrency", type=click.IntRange(1), metavar="N",
              help="Runs this process drives at once (default: STEPSTONE_WORKER_CONCURRENCY, 4).")
@click.option("--queue", "queues", multiple=True, metavar="NAME",
              help="Only take runs of this queue (repeatable; default: every queue).")
@click.option("--queue-limit", "queue_limits", multiple=True, metavar="NAME=N",
              help="At most N runs of queue NAME driven at once, by all workers together.")
@click.option("--import", "imports", multiple=True, metavar="MODULE",
              help="Import this module first (workflows are otherwise imported from where "
              "each run recorded them).")
@click.option("--lease", "lease_s", type=click.FloatRange(min=0.1), metavar="SECONDS",
              help="Lease duration (default: STEPSTONE_LEASE_DURATION_S, 30).")
@click.option("--heartbeat", "heartbeat_s", type=click.FloatRange(min=0.05), metavar="SECONDS",
              help="Heartbeat interval (default: STEPSTONE_HEARTBEAT_INTERVAL_S, 10).")
@click.option("--poll", "poll_s", type=click.FloatRange(min=0.01), metavar="SECONDS",
              help="Idle poll interval (default: STEPSTONE_WORKER_POLL_INTERVAL_S, 1).")
@click.option("--metrics-port", type=click.IntRange(0, 65535), metavar="PORT",
              help="Serve Prometheus metrics at http://HOST:PORT/metrics.")
@click.option("--metrics-host", default="127.0.0.1", show_default=True, metavar="HOST",
              help="Interface for --metrics-port (0.0.0.0 to be scraped from elsewhere).")
@log_format_option
def worker(database_url: str | None, concurrency: int | None, queues: tuple[str, ...],
           queue_limits: tuple[str, ...], imports: tuple[str, ...], lease_s: float | None,
           heartbeat_s: float | None, poll_s: float | None, metrics_port: int | None,
           metrics_host: str, log_format: str) -> None:
    """Drive runnable runs until SIGTERM/Ctrl-C, then drain and exit 0.

    On SIGTERM the worker stops claiming, its runs stop at their next checkpoint with
    progress saved, and their leases are handed back for other workers to resume at once.
    """
    setup_logging(log_format, at_least=logging.INFO)
    limits = [_queue_limit(text) for text in queue_limits]

    def notice(signame: str) -> None:
        log.info("%s: draining (Ctrl-C again to force exit)", signame)

    # The handler goes in before anything slow (imports, connecting): a SIGTERM that arrives
    # while the worker starts up makes it exit 0 having claimed nothing, never die of it.
    token = PreemptionToken()
    try:
        with signals_request_preemption(token, on_first=notice):
            engine = _engine(database_url, imports, lease_s, heartbeat_s, poll_s, concurrency,
                             token)
            metrics = None
            if metrics_port is not None:
                try:
                    from engine.workers.metrics import WorkerMetrics
                except ImportError as e:
                    engine.close()
                    missing(OPTION_EXTRAS["--metrics-port"], "--metrics-port", e)
                metrics = WorkerMetrics()
                try:
                    metrics.serve(metrics_port, metrics_host)
                except OSError as e:
                    engine.close()
                    fail(f"--metrics-port {metrics_port}: cannot listen on {metrics_host}: {e}")
                log.info("metrics at http://%s:%d/metrics", metrics_host, metrics_port)
            with engine:
                Worker(engine, queues=queues or None, queue_limits=limits,
                       metrics=metrics).run()
    except KeyboardInterrupt:
        click.echo("forced exit: every recorded event is safe; leases expire and other workers "
                   "take the runs over", err=True)
        sys.exit(EXIT_FORCED)


def _engine(database_url: str | None, imports: tuple[str, ...], lease_s: float | None,
            heartbeat_s: float | None, poll_s: float | None, concurrency: int | None,
            token: PreemptionToken) -> Engine:
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    overrides: dict[str, object] = {}
    if database_url:
        overrides["database_url"] = database_url
    for name, value in (("lease_duration_s", lease_s), ("heartbeat_interval_s", heartbeat_s),
                        ("worker_poll_interval_s", poll_s), ("worker_concurrency", concurrency)):
        if value is not None:
            overrides[name] = value
    try:
        for module in imports:
            importlib.import_module(module)
        settings = Settings(**overrides)
        engine = Engine(settings.for_worker(), token=token)
        # @workflow(schedule=...) in the imported modules: declared (or updated) on start.
        declare_schedules(engine, [sys.modules[m] for m in imports])
        return engine
    except ImportError as e:
        fail(f"--import: {e}")
    except ValidationError as e:
        fail(settings_error(e))
    except EngineError as e:
        fail(str(e))

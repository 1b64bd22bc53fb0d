"""The retention policy of the settings, applied on a period by a long-running projector.

`STEPSTONE_RETENTION_FINISHED_AFTER_S` (with `..._INTERVAL_S` and `..._ARCHIVE_DIR`) makes
`stepstone projections run` prune, every interval, the runs that finished longer ago than that,
exactly as `stepstone prune` would (archive first and verified, whole runs, bounded
transactions). A prune that fails is logged and tried again at the next interval: retention
must never stop the views from following the log.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from engine import Engine, EngineError, Settings
from engine.audit.retention import Policy
from engine.logcontext import get_logger
from stepstone.pruning import prune

log = get_logger("stepstone.retention")


def prune_once(engine: Engine) -> None:
    """One prune by the settings' policy (which must be set)."""
    settings = engine.settings
    assert settings.retention_finished_after_s is not None
    now = datetime.now(UTC)
    policy = Policy(now - timedelta(seconds=settings.retention_finished_after_s))
    archive = None
    if settings.retention_archive_dir:
        archive = Path(settings.retention_archive_dir) / f"stepstone-{now:%Y%m%dT%H%M%SZ}.jsonl.gz"
    report = prune(engine, policy, archive=archive)
    if report.chosen:
        log.info("retention: pruned %d runs (%d events)%s", report.removed_runs,
                 report.removed_events, f", archived to {archive}" if archive else "")


@contextmanager
def retention(settings: Settings, stop: threading.Event) -> Iterator[None]:
    """Prune on the settings' period in a thread while the body runs (nothing when unset)."""
    if settings.retention_finished_after_s is None:
        yield
        return

    def loop() -> None:
        while not stop.wait(settings.retention_interval_s):
            try:
                with Engine(settings, create=False) as engine:
                    prune_once(engine)
            except (EngineError, OSError) as e:
                log.warning("retention: this prune failed, the next is in %.0f s: %s",
                            settings.retention_interval_s, e)

    thread = threading.Thread(target=loop, name="retention", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=60)

"""Settings: built at the edge (CLI, app factory, embedding code), read nowhere else."""

from __future__ import annotations

import os
import socket
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from engine.stopping import RunLimits

ENV_PREFIX = "STEPSTONE_"


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Settings(BaseModel):
    """Engine settings; each field can be given in code or as `STEPSTONE_<FIELD>`.

    A plain pydantic model that reads its variables itself: `pydantic_settings` cost every
    process that imports the engine ~45 ms (it imports asyncio, dotenv and cloud providers'
    settings sources) for what is one loop over the environment here.
    """

    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _from_environment(cls, data: Any) -> Any:
        """A field not given in code comes from `STEPSTONE_<FIELD>` (the name in any case),
        validated like a value given in code. The engine's one reader of the environment."""
        if not isinstance(data, dict):
            return data
        found: dict[str, Any] = {}
        for key, value in os.environ.items():
            name = key.upper().removeprefix(ENV_PREFIX).lower()
            if key.upper().startswith(ENV_PREFIX) and name in cls.model_fields:
                found[name] = value
        return {**found, **data}

    database_url: str = Field(
        default="sqlite:///stepstone.db",
        description="sqlite:///relative/path.db, sqlite:////absolute/path.db, or "
        "postgresql://user[:password]@host[:port]/dbname[?schema=name]",
    )
    worker_id: str = Field(default_factory=default_worker_id)
    snapshot_interval: int = Field(
        default=200, ge=0, description="take a snapshot every N events of a run (0: never)"
    )
    checkpoint_min_interval_s: float = Field(
        default=0.0,
        ge=0.0,
        description="record at most one checkpoint per step per this many seconds; the latest "
        "one is still recorded before a preemption or a failure",
    )
    postgres_pool_size: int = Field(default=2, ge=1)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    lease_duration_s: float = Field(
        default=30.0, gt=0,
        description="how long a worker's claim on a run lasts without a heartbeat; a dead "
        "worker's runs are taken over this long after its last heartbeat",
    )
    heartbeat_interval_s: float = Field(
        default=10.0, gt=0, description="how often a worker renews its leases (< lease)"
    )
    worker_concurrency: int = Field(
        default=4, ge=1, description="runs one worker process drives at once"
    )
    worker_poll_interval_s: float = Field(
        default=1.0, gt=0,
        description="how often an idle worker looks for runnable runs (PostgreSQL workers "
        "are also woken at once by new runs)",
    )
    worker_drain_timeout_s: float = Field(
        default=60.0, gt=0,
        description="on SIGTERM, how long a worker waits for its runs to reach a checkpoint "
        "before it exits anyway (their leases then expire and others take over)",
    )
    store_retry_s: float = Field(
        default=60.0, ge=0,
        description="after a save fails (the database restarts, a connection drops, the disk "
        "is full), how long a drive keeps reloading the run from its log and going on, with "
        "backoff, before it gives up with the run's progress saved (0: give up at once)",
    )
    max_takeovers: int = Field(
        default=5, ge=1,
        description="a run is taken over from a dead worker at most this many times in a "
        "row; at the next death it is parked, not claimed again (a step that kills its "
        "process would crash every worker in turn)",
    )
    # -- control, docs/controlling-runs.md --
    max_events_per_run: int = Field(
        default=10_000_000, ge=100,
        description="a run that reaches this many events fails (RunawayLimitError, naming "
        "the step), instead of filling the disk; a million-event run is an ordinary one",
    )
    max_checkpoints_per_minute: int = Field(
        default=60_000, ge=1,
        description="a step attempt that writes more checkpoints than this within a minute "
        "fails its run (RunawayLimitError): a loop checkpointing without progress",
    )
    step_timeout_grace_s: float = Field(
        default=2.0, ge=0,
        description="past a step attempt's timeout (or the run's deadline), how long its "
        "driver waits for it to reach a checkpoint before it abandons the attempt",
    )
    cancel_poll_s: float = Field(
        default=1.0, gt=0,
        description="how often a process driving runs looks for cancel requests on them",
    )
    # -- retention, docs/operations.md --
    retention_finished_after_s: float | None = Field(
        default=None, gt=0,
        description="retention: a projector (`stepstone projections run`) prunes runs that "
        "finished longer ago than this many seconds, every `retention_interval_s` (unset: "
        "never; `stepstone prune` does it by hand)",
    )
    retention_interval_s: float = Field(
        default=3600.0, gt=0, description="retention: seconds between two prunes"
    )
    retention_archive_dir: str | None = Field(
        default=None,
        description="retention: archive each prune's runs to a new file in this directory "
        "first (verified before anything is deleted); unset: prune without an archive",
    )

    @model_validator(mode="after")
    def _heartbeat_shorter_than_lease(self) -> Self:
        if self.heartbeat_interval_s >= self.lease_duration_s:
            raise ValueError(
                f"the heartbeat interval ({self.heartbeat_interval_s}s) must be shorter than "
                f"the lease ({self.lease_duration_s}s), or leases expire between heartbeats"
            )
        return self

    def run_limits(self) -> RunLimits:
        return RunLimits(
            max_events_per_run=self.max_events_per_run,
            max_checkpoints_per_minute=self.max_checkpoints_per_minute,
            step_timeout_grace_s=self.step_timeout_grace_s,
        )

    def for_worker(self) -> Settings:
        """These settings sized for a worker: every run in flight saves through the store's
        connection pool, plus one connection for claims and reads."""
        pool = max(self.postgres_pool_size, self.worker_concurrency + 1)
        return self.model_copy(update={"postgres_pool_size": pool})

"""Where the log lives: a store URL parsed once into the `eventsourcing` environment that opens
it and the connection arguments every other connection to the same database uses."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from engine.errors import ConfigurationError

ORDERED_RECORDER_TOPIC = "engine.storage.postgres_recorder:OrderedPostgresRecorder"
"""The PostgreSQL recorder, by topic: the library imports it (and psycopg) only for a
PostgreSQL store, so a SQLite store never loads the driver."""

_SQLITE = "sqlite"
_POSTGRES = ("postgresql", "postgres")


@dataclass(frozen=True)
class StoreLocation:
    """Where the log lives; `env` is what the `eventsourcing` factory reads."""

    url: str
    kind: str  # "sqlite" or "postgres"
    env: dict[str, str]
    sqlite_path: Path | None = None

    @property
    def schema(self) -> str:
        """The PostgreSQL schema of the log and of everything kept beside it."""
        return self.env.get("POSTGRES_SCHEMA") or "public"

    def connect_kwargs(self, purpose: str) -> dict[str, Any]:
        """psycopg connection arguments for a PostgreSQL store; `purpose` names the connection
        in `pg_stat_activity` (the index, the API, a listener...) for operators and tests."""
        env = self.env
        return {
            "dbname": env["POSTGRES_DBNAME"],
            "host": env["POSTGRES_HOST"],
            "port": env["POSTGRES_PORT"],
            "user": env["POSTGRES_USER"],
            "password": env["POSTGRES_PASSWORD"],
            "connect_timeout": int(env["POSTGRES_CONNECT_TIMEOUT"]),
            "application_name": f"stepstone-{purpose}",
        }

    @property
    def display(self) -> str:
        """The URL without its password, safe to print."""
        parts = urlsplit(self.url)
        if parts.password:
            netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
            return parts._replace(netloc=netloc).geturl()
        return self.url


def parse_store_url(
    url: str, *, connect_timeout_s: float = 5.0, pool_size: int = 2
) -> StoreLocation:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == _SQLITE:
        return _sqlite(url, parts.netloc + parts.path)
    if scheme in _POSTGRES:
        return _postgres(url, connect_timeout_s, pool_size)
    raise ConfigurationError(
        f"unsupported store URL {url!r}: use sqlite:///path/to/file.db or "
        "postgresql://user@host:port/dbname"
    )


def _sqlite(url: str, raw: str) -> StoreLocation:
    # sqlite:///rel.db -> "/rel.db" after the scheme; sqlite:////abs.db -> "//abs.db".
    path_text = raw[1:] if raw.startswith("/") else raw
    if not path_text or path_text == ":memory:":
        raise ConfigurationError(
            f"store URL {url!r} names no file: use sqlite:///stepstone.db (in-memory stores "
            "would lose the log, which defeats the point)"
        )
    path = Path(unquote(path_text))
    env = {
        "PERSISTENCE_MODULE": "engine.storage.sqlite_durable",
        "SQLITE_DBNAME": str(path),
        "SQLITE_LOCK_TIMEOUT": "30",
    }
    return StoreLocation(url=url, kind="sqlite", env=env, sqlite_path=path)


def _postgres(url: str, connect_timeout_s: float, pool_size: int) -> StoreLocation:
    parts = urlsplit(url)
    dbname = parts.path.lstrip("/")
    if not parts.hostname or not dbname:
        raise ConfigurationError(
            f"store URL {url!r} needs a host and a database: postgresql://user@host:5432/dbname"
        )
    query = parse_qs(parts.query)
    env = {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": unquote(dbname),
        "POSTGRES_HOST": parts.hostname,
        "POSTGRES_PORT": str(parts.port or 5432),
        "POSTGRES_USER": unquote(parts.username or "postgres"),
        "POSTGRES_PASSWORD": unquote(parts.password or ""),
        "POSTGRES_CONNECT_TIMEOUT": str(int(max(1, connect_timeout_s))),
        "POSTGRES_POOL_SIZE": str(pool_size),
        "POSTGRES_MAX_OVERFLOW": "4",
        "POSTGRES_LOCK_TIMEOUT": "30",
        "POSTGRES_IDLE_IN_TRANSACTION_SESSION_TIMEOUT": "30",
        # No pre-ping: it costs a round trip per save, and every recorder call already retries
        # on a dead connection (the library's @retry on Interface/OperationalError).
        "POSTGRES_PRE_PING": "n",
        # One round trip per save that still commits in notification-id order.
        "APPLICATION_RECORDER_TOPIC": ORDERED_RECORDER_TOPIC,
        "POSTGRES_ENABLE_DB_FUNCTIONS": "y",
    }
    if "schema" in query:
        env["POSTGRES_SCHEMA"] = query["schema"][0]
    return StoreLocation(url=url, kind="postgres", env=env)

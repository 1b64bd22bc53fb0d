"""Archives: whole runs in the export format, gzip-compressed, that verify on their own.

An archive is a file of export records (`engine.audit.export.record_of`: one stored event per
line, its payload exactly as stored, hash and prev_hash included), written run after run, each
run's events in version order. So an archive is checked without the store it came from (each
run's chain must verify from version 1 to its end) and imports back into any store, where the
runs replay and their chains verify again. `gzip` (the standard library) because an archive
is written once and read rarely: it saves most of the space (the payloads are repetitive
JSON) and any tool reads it (`zcat FILE | jq`).
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast
from uuid import UUID

import orjson

from engine.audit.export import Row, record_of, stored_event
from engine.audit.verify import ChainVerifier, Head, Problem
from engine.errors import EngineError
from engine.store import RunStore


class ArchiveError(EngineError):
    """An archive that cannot be read, or does not verify, or does not match the store."""


@dataclass
class ArchiveReport:
    """What an archive holds and whether its chains verify."""

    events: int = 0
    runs: dict[UUID, Head] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def open_archive(path: str | Path, mode: str = "rb", *, named: str | Path | None = None
                 ) -> IO[bytes]:
    """The archive for reading or writing: written gzip-compressed unless its name (or the
    name it will be renamed to, `named`) ends in `.jsonl`.

    Reading sniffs the gzip magic bytes instead, so a plain export file is read as well.
    """
    if "w" in mode or "x" in mode:
        if str(named or path).endswith(".jsonl"):
            return open(path, mode)
        # Buffered: gzip's own write costs a call into zlib per line otherwise.
        raw = cast(io.RawIOBase, gzip.open(path, mode, compresslevel=6))  # noqa: SIM115
        return io.BufferedWriter(raw, 1 << 20)
    with open(path, "rb") as probe:
        zipped = probe.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if zipped else open(path, "rb")  # type: ignore[return-value]


class ArchiveWriter:
    """Writes whole runs to an archive, one run at a time, in constant memory."""

    def __init__(self, store: RunStore, out: IO[bytes]) -> None:
        self.store = store
        self.out = out
        self.written: dict[UUID, Head] = {}
        self.events = 0

    def write_run(self, run_id: UUID) -> Head:
        """Append every event of the run; returns where its chain ends (checked later)."""
        last: Row | None = None
        for r in self.store.reader.iter_run(run_id):
            last = Row(r.position, run_id, r.version, r.topic, r.state)
            self.out.write(orjson.dumps(record_of(last)) + b"\n")
            self.events += 1
        head = Head(run_id, 0, None) if last is None else Head(
            run_id, last.version, orjson.loads(last.state).get("hash"))
        self.written[run_id] = head
        return head


def records(path: str | Path) -> Iterator[dict[str, Any]]:
    """The records of an archive (or a plain export), in file order, one at a time."""
    try:
        with open_archive(path) as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = orjson.loads(line)
                except orjson.JSONDecodeError as e:
                    raise ArchiveError(f"{path}: line {number} is not JSON ({e}); the archive "
                                       "is damaged") from e
                yield record
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise ArchiveError(f"cannot read archive {path}: {e}") from e


def verify_archive(path: str | Path) -> ArchiveReport:
    """Check every run's chain in the archive, from its first version to its last.

    Each run must be whole: its events contiguous in the file, from version 1 on (an archive
    of pruned runs must be able to stand in for them), and every hash must match its content
    and link to the event before it.
    """
    verifier = ChainVerifier()
    report = ArchiveReport()
    closed: set[UUID] = set()
    current: UUID | None = None
    for number, record in enumerate(records(path), 1):
        try:
            row = Row(int(record["position"]), UUID(record["run_id"]), int(record["version"]),
                      str(record["topic"]), orjson.dumps(record["event"]))
        except (KeyError, ValueError, TypeError) as e:
            raise ArchiveError(f"{path}: record {number} is not an export record ({e})") from e
        if row.run_id != current:
            if row.run_id in closed:
                report.problems.append(Problem(row.position, row.run_id, row.version,
                                               "the run's events are split in the archive"))
            if current is not None:
                closed.add(current)
            current = row.run_id
        verifier.feed(row)
    chains = verifier.finish()
    report.events = chains.events
    report.problems.extend(chains.problems)
    report.runs = {h.run_id: h for h in chains.heads}
    for run_id in chains.unchained:
        report.problems.append(Problem(0, run_id, 0, "the run has no hash chain to verify"))
    return report


def import_archive(store: RunStore, path: str | Path) -> tuple[list[UUID], list[UUID]]:
    """Append the archive's runs to `store`, one transaction per run; returns the runs
    imported and the runs already there (the same chain head: an earlier import, so a rerun
    after a crash finishes the job). The archive is verified first; a run in the store whose
    head differs is an `ArchiveError` and nothing more is imported."""
    report = verify_archive(path)
    if not report.ok:
        raise ArchiveError(f"{path} does not verify: {report.problems[0]}; nothing imported")
    imported: list[UUID] = []
    present: list[UUID] = []
    for run_id, events in _runs(path):
        last = store.reader.last_event(run_id)
        if last is not None:
            head = report.runs[run_id]
            if last.version == head.version and orjson.loads(last.state).get("hash") == head.hash:
                present.append(run_id)
                continue
            raise ArchiveError(f"run {run_id} is in the store already with another history "
                               f"(version {last.version}); nothing more imported")
        store.recorder.insert_events([stored_event(r) for r in events])
        imported.append(run_id)
    return imported, present


def _runs(path: str | Path) -> Iterator[tuple[UUID, list[dict[str, Any]]]]:
    """The archive's runs one at a time, each with its records (one run in memory)."""
    run_id: UUID | None = None
    batch: list[dict[str, Any]] = []
    for record in records(path):
        rid = UUID(record["run_id"])
        if rid != run_id and batch:
            assert run_id is not None
            yield run_id, batch
            batch = []
        run_id = rid
        batch.append(record)
    if batch and run_id is not None:
        yield run_id, batch

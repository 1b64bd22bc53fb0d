"""Verify the hash chains of the log: find the first edited, removed, inserted or moved event.

Reads the raw stored rows (not the decoded events, and never snapshots), recomputes each
event's hash (`engine.audit.chain`) and checks it links to the previous event of its run. What a
keyless chain can and cannot prove is in docs/audit.md; `anchors` (heads recorded earlier,
kept elsewhere) close the biggest gaps: a rewrite of every later hash, and a cut-off tail.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal, cast
from uuid import UUID

import orjson

from engine.aggregate import RunSnapshot, RunState
from engine.audit.chain import content_digest
from engine.audit.export import Row, rows
from engine.errors import EngineError
from engine.store import RunStore

Progress = Callable[[int], None]


@dataclass(frozen=True)
class Problem:
    """The first bad event of one run: its global position, run, version and what is wrong."""

    position: int
    run_id: UUID
    version: int
    what: str

    def __str__(self) -> str:
        return f"position {self.position} (run {self.run_id}, version {self.version}): {self.what}"


@dataclass(frozen=True)
class Head:
    """Where a run's chain ends: publish these to check later that nothing was rewritten."""

    run_id: UUID
    version: int
    hash: str | None


@dataclass
class _Chain:
    version: int = 0
    position: int = 0
    hash: str | None = None
    chained: bool = False
    broken: bool = False
    hashes_at: dict[int, str | None] = field(default_factory=dict)


@dataclass
class VerifyReport:
    events: int = 0
    problems: list[Problem] = field(default_factory=list)
    unchained: list[UUID] = field(default_factory=list)
    heads: list[Head] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first(self) -> Problem | None:
        return min(self.problems, key=lambda p: p.position) if self.problems else None


class ChainVerifier:
    """Feed it rows in log order (or one run's in version order); it keeps one chain per run."""

    def __init__(self, anchors: Mapping[UUID, tuple[int, str]] | None = None) -> None:
        self.anchors = dict(anchors or {})
        self.chains: dict[UUID, _Chain] = {}
        self.report = VerifyReport()

    def feed(self, row: Row) -> None:
        self.report.events += 1
        chain = self.chains.setdefault(row.run_id, _Chain())
        if chain.broken:
            return
        problem = self._check(chain, row)
        if problem is not None:
            chain.broken = True
            self.report.problems.append(Problem(row.position, row.run_id, row.version, problem))

    def _check(self, chain: _Chain, row: Row) -> str | None:
        expected_version = chain.version + 1
        if row.version != expected_version:
            return (f"version {row.version} comes where version {expected_version} was "
                    "expected (events removed or moved)")
        if row.position <= chain.position:
            return (f"its position is before that of version {chain.version} "
                    f"({chain.position}): events were reordered")
        try:
            payload = orjson.loads(row.state)
            stored = payload.pop("hash", None)
        except (orjson.JSONDecodeError, AttributeError):
            return "its payload is not a JSON object"
        prev = payload.get("prev_hash")
        chain.version, chain.position = row.version, row.position
        if stored is None:
            if chain.chained:
                return "it has no hash, but earlier events of the run do (hash removed?)"
            if row.version == 1 and payload.get("class_version", 1) >= 2:
                return "a RunStarted of a release with hash chains, without its hash"
            if prev is not None:
                return "it has a prev_hash but no hash of its own"
            chain.hash = None  # written before hash chains: nothing to check
            return None
        if content_digest(row.topic, row.run_id, row.version, payload) != stored:
            return "its content does not match its hash (edited)"
        if prev != chain.hash:
            return (f"its prev_hash does not match the hash of version {chain.version - 1} "
                    "(an event before it was removed, inserted, replaced or moved)")
        chain.chained = True
        chain.hash = stored
        if row.run_id in self.anchors and self.anchors[row.run_id][0] == row.version:
            chain.hashes_at[row.version] = stored
        return None

    def finish(self) -> VerifyReport:
        report = self.report
        for run_id, chain in self.chains.items():
            report.heads.append(Head(run_id, chain.version, chain.hash))
            if not chain.chained and not chain.broken:
                report.unchained.append(run_id)
        for run_id, (version, hash_) in self.anchors.items():
            anchored = self.chains.get(run_id)
            if anchored is None:
                report.problems.append(
                    Problem(0, run_id, version, "the anchored run has no events (removed)"))
            elif anchored.broken:
                continue
            elif anchored.version < version:
                report.problems.append(Problem(
                    anchored.position, run_id, anchored.version,
                    f"the run ends at version {anchored.version}, but version {version} was "
                    "anchored: its last events were removed"))
            elif anchored.hashes_at.get(version) != hash_:
                report.problems.append(Problem(
                    anchored.position, run_id, version,
                    "the hash at the anchored version differs: the chain was rewritten"))
        return report


Snapshots = Literal["latest", "all", "none"]
"""Which snapshots `verify` checks: each run's latest (the one every load trusts), all of
them (older ones serve time travel), or none (the chains only)."""


def verify(
    store: RunStore,
    run_id: UUID | None = None,
    *,
    anchors: Mapping[UUID, tuple[int, str]] | None = None,
    progress: Progress | None = None,
    snapshots: Snapshots = "latest",
) -> VerifyReport:
    """Check one run's chain, or every run's in one pass over the log; then the snapshots.

    A snapshot is checked by folding its run's events, which costs about what loading the
    run without snapshots costs; the chains alone are a fast pass over the raw rows.
    """
    if run_id is not None and anchors:
        anchors = {k: v for k, v in anchors.items() if k == run_id}
    report = verify_rows(rows(store, run_id=run_id), anchors=anchors, progress=progress)
    if snapshots == "none":
        return report
    broken = {p.run_id for p in report.problems}
    runs = [run_id] if run_id is not None else store.snapshotted_runs()
    for rid in runs:
        if rid not in broken:  # a broken chain is reported already; its fold would fail
            report.problems.extend(check_snapshots(store, rid, latest_only=snapshots == "latest"))
    return report


def check_snapshots(store: RunStore, run_id: UUID, *, latest_only: bool = False) -> list[Problem]:
    """The run's snapshots (or its latest) against the state its events fold to.

    A load trusts a snapshot whose chain hash matches the stored event at its version, so an
    edit of anything else in it (an output, a status) would change what resumes see while
    every event still verifies. Folding the events once, in pages, and comparing at each
    snapshot's version finds it.
    """
    versions = store.snapshot_versions(run_id)
    wanted = set(versions[-1:] if latest_only else versions)
    problems: list[Problem] = []
    if not wanted:
        return problems
    last = max(wanted)
    for run in store.replay_events(run_id):
        if run.version in wanted:  # one snapshot in memory at a time, as the fold reaches it
            problem = _compare(store, run_id, run.version, run.state)
            if problem is not None:
                problems.append(problem)
        if run.version >= last:
            break
    return problems


def _compare(store: RunStore, run_id: UUID, version: int, folded: RunState) -> Problem | None:
    stored = store.snapshot_row(run_id, version)
    if stored is None:
        return None  # removed meanwhile: nothing a load could trust
    try:
        snapshot = cast(RunSnapshot, store.mapper.to_domain_event(stored))
    except EngineError as e:
        return _snapshot_problem(store, run_id, version, f"it does not decode: {e}")
    if snapshot.state != folded:
        return _snapshot_problem(
            store, run_id, version,
            "it differs from the state its events fold to (edited); loads that trust it "
            "would see that state, so delete the snapshot row (the run then loads from "
            "its events)")
    return None


def _snapshot_problem(store: RunStore, run_id: UUID, version: int, what: str) -> Problem:
    position = store.position_of(run_id, version) or 0
    return Problem(position, run_id, version, f"the snapshot at version {version}: {what}")


def verify_rows(
    source: Iterable[Row],
    *,
    anchors: Mapping[UUID, tuple[int, str]] | None = None,
    progress: Progress | None = None,
) -> VerifyReport:
    verifier = ChainVerifier(anchors)
    step = 0
    for row in source:
        verifier.feed(row)
        step += 1
        if progress is not None and step == 5000:
            progress(step)
            step = 0
    if progress is not None and step:
        progress(step)
    return verifier.finish()


def read_anchors(heads: Iterable[object]) -> dict[UUID, tuple[int, str]]:
    """Anchors from the JSON objects `stepstone verify --json` printed for each run's head.

    Anything else is a `ValueError` naming its place: an anchors file that is silently read
    as "no anchors" would let a verification pass that checked nothing.
    """
    out: dict[UUID, tuple[int, str]] = {}
    for number, h in enumerate(heads, 1):
        try:
            if not isinstance(h, dict) or not {"run_id", "version", "hash"} <= h.keys():
                raise ValueError("expected an object with run_id, version and hash")
            run_id, version = UUID(str(h["run_id"])), int(str(h["version"]))
            if h["hash"] is not None and not isinstance(h["hash"], str):
                raise ValueError("hash is not a string")
        except ValueError as e:
            raise ValueError(f"entry {number} is not a run's head ({e}): {h!r:.200}") from None
        if h["hash"]:  # a run written before hash chains has no head to anchor
            out[run_id] = (version, str(h["hash"]))
    return out

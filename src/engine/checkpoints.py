"""Checkpoints validated before a resume trusts them: versions, sources, expected effects.

A checkpoint is an event, so a new attempt can check the one it is about to resume from:

1. **source**: the fingerprint recorded with it (`engine.fingerprints`) is computed again; a
   different value follows the step's `on_source_change` (`restart`, `fail`, `trust`);
2. **effects**: with `verify_effects`, the keys recorded by the checkpoints in the step's line
   are handed to it, a page at a time, read from the log in constant memory; the step resumes
   from the last checkpoint whose effects (and all before it) verify, or follows
   `on_missing_effects` (`fallback`, the default, `restart`, `fail`);
3. **version**: a checkpoint written by another `checkpoint_version` goes through the step's
   upgrade function, or follows `on_version_change` (`restart`, `fail`).

Each check that applies ends in one `CheckpointValidated` event (committed before the step's
code runs), which the aggregate folds: the state handed over, the line of checkpoints left.
A plain checkpoint (no source, no effects, the step's version) is not checked and costs
nothing here.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import orjson
from eventsourcing.persistence import StoredEvent
from eventsourcing.utils import get_topic

from engine import events as ev
from engine.checkpoint_policy import (
    MISSING_SHOWN,
    CheckpointPolicy,
    CheckpointRejectedError,
    VerifyEffects,
)
from engine.definitions import JsonCodec
from engine.errors import EngineError
from engine.fingerprints import Fingerprint
from engine.unwinding import Halt

if TYPE_CHECKING:
    from engine.context import StepContext
    from engine.definitions import Step
    from engine.driver import RunDriver

Outcome = ev.CheckpointOutcome
_RANK = list(Outcome)  # declared from best to worst
_KEYS_PER_CALL = 5000


@dataclass(frozen=True)
class Pending:
    """A checkpoint asked for but not yet committed (throttled: `checkpoint_min_interval_s`)."""

    ctx: StepContext
    state: Any
    done: int | None
    total: int | None
    source: dict[str, Any] | None = None
    effects: list[str] | None = None

    @classmethod
    def of(cls, held: Pending | None, ctx: StepContext, state: Any, done: int | None,
           total: int | None, source: Fingerprint | None, effects: Iterable[str]) -> Pending:
        """The checkpoint to commit next; it keeps the effects of the one it replaces."""
        if held is None and source is None and not effects:
            return cls(ctx, state, done, total)  # a plain checkpoint
        keys = [str(k) for k in effects]
        if held is not None and held.effects:
            keys = held.effects + keys
        return cls(ctx, state, done, total, source.model_dump() if source else None, keys)


@dataclass(frozen=True)
class _Candidate:
    """A checkpoint the step could resume from."""

    sequence: int
    state: Any
    version: int
    source: dict[str, Any] | None


@dataclass
class _Verdict:
    outcome: Outcome = Outcome.VALID
    notes: list[str] = field(default_factory=list)
    source_now: str | None = None
    missing: list[str] = field(default_factory=list)
    final: bool = False  # restarted or rejected: nothing more to check

    def worsen(self, outcome: Outcome, note: str) -> None:
        self.notes.append(note)
        if _RANK.index(outcome) > _RANK.index(self.outcome):
            self.outcome = outcome
        self.final = self.final or outcome in (Outcome.RESTARTED, Outcome.REJECTED)


def resume_state(driver: RunDriver, step: Step[..., Any], ctx: StepContext,
                 args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The checkpoint a new attempt of `step` may trust, after the checks that apply to it.

    Records the outcome (`CheckpointValidated`) and commits it before the step's code runs;
    raises `CheckpointRejectedError` when the step's policy is `fail`.
    """
    recorded = driver.run.steps[ctx.step_key]
    if recorded.checkpoint is None:
        return None
    policy, meta = step.checkpoints, driver.run.state.checkpoint_meta.get(ctx.step_key)
    latest = _Candidate(meta.sequence if meta else recorded.checkpoint_sequence,
                        recorded.checkpoint, meta.version if meta else 1,
                        meta.source if meta else None)
    verify = policy.verify_effects if meta is not None and meta.effects else None
    if latest.version == policy.version and latest.source is None and verify is None:
        return recorded.checkpoint
    verdict = _Verdict()
    chosen = latest
    _check_source(policy, latest, verdict)
    if verify is not None and not verdict.final:
        assert meta is not None
        good, missing, count = _verified_line(driver, ctx.step_key, meta.discarded, verify,
                                              args, kwargs)
        if count:
            verdict.missing = missing
            note = f"{count} expected effect(s) missing, e.g. {', '.join(missing[:3])}"
            if policy.on_missing_effects == "fallback" and good is not None:
                verdict.worsen(Outcome.FELL_BACK, f"{note}; resumed from checkpoint "
                                                  f"#{good.sequence}, whose effects verify")
                chosen = good
                if good.source != latest.source:
                    _check_source(policy, good, verdict)
            elif policy.on_missing_effects == "fallback":
                verdict.worsen(Outcome.RESTARTED, f"{note}; no checkpoint's effects all verify")
            else:
                verdict.worsen(_by_policy(policy.on_missing_effects), note)
    state = chosen.state
    if chosen.version != policy.version and not verdict.final:
        state = _check_version(step, chosen, verdict)
    _record(driver, ctx, policy, latest, chosen, state, verdict)
    if verdict.outcome is Outcome.REJECTED:
        raise CheckpointRejectedError(
            f"step {ctx.step_key}: checkpoint #{chosen.sequence} is not valid "
            f"({'; '.join(verdict.notes)}) and the step's policy is 'fail'; start a new run, "
            "or declare 'restart' (or an upgrade) on the step to resume this kind of run"
        )
    return None if verdict.outcome is Outcome.RESTARTED else state


def _by_policy(policy: str) -> Outcome:
    return Outcome.REJECTED if policy == "fail" else Outcome.RESTARTED


def _check_source(policy: CheckpointPolicy, cp: _Candidate, verdict: _Verdict) -> None:
    if cp.source is None:
        return
    recorded = Fingerprint.model_validate(cp.source)
    now = recorded.current()
    verdict.source_now = now
    if now == recorded.value:
        return
    note = f"source {recorded.describe()} changed ({recorded.value} -> {now})"
    if policy.on_source_change == "trust":
        verdict.worsen(Outcome.TRUSTED, f"{note}; trusted, as the step declares")
    else:
        verdict.worsen(_by_policy(policy.on_source_change), note)


def _check_version(step: Step[..., Any], cp: _Candidate, verdict: _Verdict) -> Any:
    policy = step.checkpoints
    note = f"written by checkpoint_version {cp.version}, the step is at {policy.version}"
    upgrade = policy.on_version_change
    if not callable(upgrade):
        verdict.worsen(_by_policy(upgrade), note)
        return None
    if cp.version > policy.version:
        verdict.worsen(Outcome.REJECTED, f"{note}: an upgrade function cannot go back; "
                                         "resume it with the code that wrote it")
        return None
    try:
        state = JsonCodec(None, f"the upgraded checkpoint of step {step.name!r}").encode(
            upgrade(cp.state, cp.version))
    except EngineError as e:  # not the step's failure: the run stays resumable
        raise Halt(e) from e
    verdict.worsen(Outcome.UPGRADED, f"{note}; upgraded")
    return state


def _record(driver: RunDriver, ctx: StepContext, policy: CheckpointPolicy,
            latest: _Candidate, chosen: _Candidate, state: Any, verdict: _Verdict) -> None:
    outcome = verdict.outcome
    handed = outcome in (Outcome.UPGRADED, Outcome.FELL_BACK)
    driver.record(
        driver.run.validate_checkpoint, ctx.step_key, ctx.attempt, outcome,
        sequence=latest.sequence, reason="; ".join(verdict.notes),
        checkpoint_version=chosen.version, step_version=policy.version,
        resumed_from=0 if outcome is Outcome.RESTARTED else chosen.sequence,
        source=chosen.source, source_now=verdict.source_now,
        missing=verdict.missing[:MISSING_SHOWN], missing_count=len(verdict.missing),
        state=state if handed else None,
    )
    driver.save()


# -- the step's line of checkpoints, read from the log ----------------------------------------
def _line(driver: RunDriver, key: str,
          discarded: list[tuple[int, int]]) -> Iterator[ev.StepCheckpointed]:
    """The step's checkpoints still in its line, oldest first, read a page at a time."""
    topic = get_topic(ev.StepCheckpointed)
    marker = b'"step_key":' + orjson.dumps(key)  # as the mapper wrote it: a cheap filter
    store = driver.store
    for row in store.reader.iter_run(driver.run.id):
        if row.topic != topic or marker not in row.state:
            continue
        event = cast(ev.StepCheckpointed, store.mapper.to_domain_event(StoredEvent(
            originator_id=row.run_id, originator_version=row.version, topic=row.topic,
            state=row.state)))
        if event.step_key == key and not any(lo <= event.sequence <= hi
                                             for lo, hi in discarded):
            yield event


def _verified_line(
    driver: RunDriver, key: str, discarded: list[tuple[int, int]], verify: VerifyEffects,
    args: tuple[Any, ...], kwargs: dict[str, Any],
) -> tuple[_Candidate | None, list[str], int]:
    """The last checkpoint whose effects, and every earlier one's, `verify` finds; the missing
    keys (sorted) and how many, when some are missing."""
    good: _Candidate | None = None
    batch: list[ev.StepCheckpointed] = []
    size = 0
    for event in _line(driver, key, discarded):
        batch.append(event)
        size += len(event.effects)
        if size >= _KEYS_PER_CALL:
            good, missing = _verify_batch(batch, good, verify, args, kwargs)
            if missing:
                return good, missing, len(missing)
            batch, size = [], 0
    good, missing = _verify_batch(batch, good, verify, args, kwargs)
    return good, missing, len(missing)


def _verify_batch(
    batch: list[ev.StepCheckpointed], good: _Candidate | None, verify: VerifyEffects,
    args: tuple[Any, ...], kwargs: dict[str, Any],
) -> tuple[_Candidate | None, list[str]]:
    keys = [k for event in batch for k in event.effects]
    missing = set(verify(keys, *args, **kwargs)) & set(keys) if keys else set()
    for event in batch:
        if missing.intersection(event.effects):
            return good, sorted(missing)
        good = _Candidate(event.sequence, event.state, event.version, event.source)
    return good, []

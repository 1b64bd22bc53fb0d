"""The interruption hotspots view: per workflow and step, how often attempts go wrong.

- `crashes`: a step started again while its previous attempt had no recorded end (completed,
  failed or preempted): the worker died under it;
- `retries`: attempts after the first (for any reason: a failure, a preemption, a crash);
- `failures`, `preemptions`: the step's failed and preempted attempts; `attempts`: all of them;
- `invalidated`: resumes that did not trust the step's last checkpoint (`CheckpointValidated`
  fell back, restarted or rejected: a changed input, lost effects, a version without upgrade).

Step events do not carry the workflow, and a crash is only visible against the previous
attempt, so the view keeps per run its workflow and its attempts without an end in a private
table (`..._hotspots_runs`): the view can be dropped and rebuilt alone.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import orjson

from engine import events as ev
from engine.events import (
    CheckpointValidated,
    RunStarted,
    StepCompleted,
    StepFailed,
    StepPreempted,
    StepStarted,
)
from projections.facts import Fact
from projections.sql import Rows, Table, Tx
from projections.view import Events, View, touched_runs

HOTSPOTS = Table(
    name="hotspots",
    columns=(
        ("workflow", "text"),
        ("step_name", "text"),
        ("attempts", "int"),
        ("retries", "int"),
        ("failures", "int"),
        ("preemptions", "int"),
        ("crashes", "int"),
        ("invalidated", "int"),
    ),
    key=("workflow", "step_name"),
)
HOTSPOTS_RUNS = Table(
    name="hotspots_runs",
    # `invalidated`: this run's invalidated checkpoints per step name, so that a pruned run's
    # share of the counts can be taken back out (projections.retention).
    columns=(("run_id", "uuid"), ("workflow", "text"), ("open_steps", "text"),
             ("invalidated", "text")),
    key=("run_id",),
)
_COUNTERS = HOTSPOTS.column_names[2:]
_STEP_KINDS: Events = frozenset({StepStarted, StepCompleted, StepFailed, StepPreempted,
                                 CheckpointValidated})
_KINDS = _STEP_KINDS | {RunStarted}


class HotspotsView(View):
    name = "hotspots"
    tables = (HOTSPOTS, HOTSPOTS_RUNS)
    handles = _KINDS
    ignores = frozenset({  # it counts attempts, knowing their run's workflow
        ev.RunResumed, ev.StepCheckpointed, ev.TimerStarted, ev.TimerFired, ev.MessageAwaited,
        ev.MessageReceived, ev.ValuePublished, ev.ChildStarted, ev.ChildFinished, ev.RunPreempted,
        ev.RunCompleted, ev.RunFailed, ev.RunCancelled, ev.RunTimedOut, ev.PatchMarked,
        ev.StepReused, ev.RunParked,
    })

    def load(self, tx: Tx, facts: Sequence[Fact]) -> Rows:
        steps = [f for f in facts if f.kind in _STEP_KINDS]
        return tx.select(self.bound[1], HOTSPOTS_RUNS.column_names, touched_runs(steps))

    def apply(self, tx: Tx, facts: Sequence[Fact], loaded: list[list[Any]]) -> None:
        counts, states_table = self.bound
        facts = [f for f in facts if f.kind in _KINDS]
        # run id -> [workflow, {step key: step name} of attempts without an end,
        #            {step name: invalidated checkpoints}, both as stored]
        states: dict[str, list[Any]] = {
            run_id: [workflow, orjson.loads(open_steps), orjson.loads(invalidated or "{}"),
                     (open_steps, invalidated)]
            for run_id, workflow, open_steps, invalidated in loaded
        }
        deltas: defaultdict[tuple[str, str], list[int]] = defaultdict(lambda: [0] * 6)
        for fact in facts:
            d = fact.data
            if fact.kind is RunStarted:
                states[fact.run_id] = [d["workflow"], {}, {}, None]
                continue
            workflow, open_steps, invalid, _ = states.setdefault(fact.run_id,
                                                                 ["", {}, {}, None])
            key = d["step_key"]
            if fact.kind is StepStarted:
                c = deltas[(workflow, d["step_name"])]
                c[0] += 1
                c[1] += d["attempt"] > 1
                c[4] += key in open_steps
                open_steps[key] = d["step_name"]
                continue
            if fact.kind is CheckpointValidated:  # inside an attempt, which stays open
                if ev.CheckpointOutcome(d["outcome"]).invalidated:
                    name = open_steps.get(key) or key.rpartition("#")[0] or key
                    deltas[(workflow, name)][5] += 1
                    invalid[name] = invalid.get(name, 0) + 1
                continue
            name = open_steps.pop(key, None) or key.rpartition("#")[0] or key
            if fact.kind is StepFailed:
                deltas[(workflow, name)][2] += 1
            elif fact.kind is StepPreempted:
                deltas[(workflow, name)][3] += 1
        rows: list[Sequence[Any]] = []
        for run_id, (workflow, open_steps, invalid, stored) in states.items():
            now = (orjson.dumps(open_steps).decode(),
                   orjson.dumps(invalid).decode() if invalid else None)
            if now != stored:  # most batches start and end a step: nothing to write
                rows.append((run_id, workflow, *now))
        tx.upsert(states_table, rows)
        tx.upsert(counts, [(*k, *v) for k, v in deltas.items()], add=True)

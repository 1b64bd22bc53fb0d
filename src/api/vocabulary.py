"""`/vocabulary.json`: the engine's run statuses and event types, for the dashboard.

The page builds its status filter, its per-status counts and its pills from this answer instead
of a list of its own, so a status added in `engine.status` shows up there with nothing to edit
in the page. It is made from `engine.status` and `engine.events` on each request (a few dozen
names: cheaper than keeping a copy in step). It holds no run data, so like the page shell it is
open even when a token is set.
"""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import read_route
from api.models import EventInfo, StatusInfo, Vocabulary
from engine.events import EVENT_TYPES
from engine.status import LEASED, OBSERVED, STATUS_AFTER, TERMINAL, RunStatus, StepStatus

PATH = "/vocabulary.json"
router = APIRouter(tags=["dashboard"])


def vocabulary() -> Vocabulary:
    """The vocabulary as the engine has it now."""
    return Vocabulary(
        run_statuses=[StatusInfo(name=s, terminal=s in TERMINAL, observed=s in OBSERVED,
                                 leased=s in LEASED) for s in RunStatus],
        step_statuses=list(StepStatus),
        events=[EventInfo(name=e.__name__, status_after=STATUS_AFTER.get(e))
                for e in EVENT_TYPES],
    )


@read_route(router, PATH, response_model=Vocabulary)
async def get_vocabulary() -> Vocabulary:
    """The run statuses (with which end a run) and the event types, as the engine has them."""
    return vocabulary()

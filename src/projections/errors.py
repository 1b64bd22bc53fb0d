"""The read side's exceptions: one root, structured attributes, messages that say what to do."""

from __future__ import annotations

from collections.abc import Iterable


class ProjectionsError(Exception):
    """Root of every error the projections raise on purpose."""


class UnknownViewError(ProjectionsError):
    """A view name that is not one of the views."""

    def __init__(self, name: str, known: Iterable[str]) -> None:
        self.name = name
        self.known = tuple(known)
        super().__init__(f"no view named {name!r}; the views are: {', '.join(self.known)}")


class EventNotProjectableError(ProjectionsError):
    """An event the projectors do not know, or cannot decode, stopped them.

    Nothing after it was applied: every view stays at the position just before it and resumes
    from there once the code knows the event (or the event is repaired).
    """

    def __init__(self, position: int, cause: str) -> None:
        self.position = position
        self.cause = cause
        super().__init__(
            f"the event at position {position} cannot be projected: {cause.rstrip('.')}. "
            f"The views stopped at position {position - 1} and resume from there once "
            "the code knows this event."
        )


class ViewSchemaError(ProjectionsError):
    """A view's table has columns this release does not write: it needs a rebuild."""

    def __init__(self, view: str, table: str) -> None:
        self.view = view
        self.table = table
        super().__init__(
            f"table {table} of view {view!r} was made by another release of Stepstone; "
            f"rebuild it with `stepstone projections rebuild {view}`"
        )


class ViewStoreError(ProjectionsError):
    """The database holding the views failed; the transaction in flight was rolled back."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(
            f"the view database failed: {reason}. Nothing of the batch in flight was kept; "
            "run the command again once the database is reachable."
        )

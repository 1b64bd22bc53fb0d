"""What `@step` declares about its checkpoints, and the error of a step whose policy is `fail`.

Kept apart from `engine.checkpoints` (the checks a resume runs), which builds on the step
definitions that import this.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from engine.retry import NonRetryableError

VersionPolicy = Literal["restart", "fail"] | Callable[[Any, int], Any]
SourcePolicy = Literal["restart", "fail", "trust"]
EffectsPolicy = Literal["fallback", "restart", "fail"]
VerifyEffects = Callable[..., Iterable[str]]
"""`verify_effects(keys, *step_args, **step_kwargs) -> missing keys`."""

MISSING_SHOWN = 20
"""How many missing effect keys a `CheckpointValidated` event names (it counts them all)."""



class CheckpointRejectedError(NonRetryableError):
    """A step's policy is `fail` and its last checkpoint did not validate: the step fails for
    good (the run too, unless the workflow catches `StepFailedError`)."""


@dataclass(frozen=True)
class CheckpointPolicy:
    """What `@step(checkpoint_version=..., on_..._change=..., verify_effects=...)` declared."""

    version: int = 1
    on_version_change: VersionPolicy = "restart"
    on_source_change: SourcePolicy = "restart"
    verify_effects: VerifyEffects | None = None
    on_missing_effects: EffectsPolicy = "fallback"

    def __post_init__(self) -> None:
        if self.version < 1:
            raise ValueError(f"@step(checkpoint_version={self.version}) must be at least 1")
        if not callable(self.on_version_change) and \
                self.on_version_change not in ("restart", "fail"):
            raise ValueError("@step(on_version_change=...) takes 'restart', 'fail' or an "
                             f"upgrade function, not {self.on_version_change!r}")
        if self.on_source_change not in ("restart", "fail", "trust"):
            raise ValueError("@step(on_source_change=...) takes 'restart', 'fail' or 'trust', "
                             f"not {self.on_source_change!r}")
        if self.on_missing_effects not in ("fallback", "restart", "fail"):
            raise ValueError("@step(on_missing_effects=...) takes 'fallback', 'restart' or "
                             f"'fail', not {self.on_missing_effects!r}")


PLAIN = CheckpointPolicy()

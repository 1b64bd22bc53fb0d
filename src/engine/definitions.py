"""`@workflow` and `@step`: how user code declares durable work.

A step's return value is recorded as JSON and the workflow always gets the decoded recorded
value back, on the first run and on every replay alike, so workflow code cannot behave
differently after a resume. A return annotation (a pydantic model, a dataclass, datetime...)
is honoured in both directions through a pydantic TypeAdapter.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import typing
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any, Generic, ParamSpec, TypeVar, overload

import orjson
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError, create_model
from pydantic_core import PydanticSerializationError

from engine.checkpoint_policy import (
    PLAIN,
    CheckpointPolicy,
    EffectsPolicy,
    SourcePolicy,
    VerifyEffects,
    VersionPolicy,
)
from engine.context import StepContext, current_runner, current_step
from engine.errors import ConfigurationError, InvalidInputError, OutputEncodingError
from engine.retry import DEFAULT_RETRY, RetryPolicy

P = ParamSpec("P")
R = TypeVar("R")


_ANY: TypeAdapter[Any] = TypeAdapter(Any)


class JsonCodec:
    """Encodes a value to JSON-compatible data through its declared type, and back.

    The type is `fn`'s return annotation, or `Any` without `fn` (checkpoint states).
    """

    def __init__(self, fn: Callable[..., Any] | None, where: str) -> None:
        self._fn = fn
        self._where = where

    @functools.cached_property
    def _adapter(self) -> TypeAdapter[Any]:
        if self._fn is None:
            return _ANY
        try:
            hints = typing.get_type_hints(self._fn)
        except NameError as e:
            raise ConfigurationError(
                f"cannot resolve the return annotation of {self._where}: {e}. Annotations are "
                "resolved in the module's globals; import the type at module level"
            ) from e
        return TypeAdapter(hints.get("return", Any))

    def encode(self, value: Any) -> Any:
        try:
            data = self._adapter.dump_python(value, mode="json")
            orjson.dumps(data)
        except (PydanticSerializationError, TypeError, ValueError) as e:
            raise OutputEncodingError(
                self._where, type(value).__qualname__, str(e).splitlines()[0]
            ) from e
        return data

    def decode(self, data: Any) -> Any:
        return self._adapter.validate_python(data)


class StepCall(Generic[R]):
    """A step call not made yet: what `gather` runs as one parallel branch."""

    def __init__(self, step: Step[..., R], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.step = step
        self.args = args
        self.kwargs = kwargs

    def __call__(self) -> R:
        return self.step(*self.args, **self.kwargs)


class Step(Generic[P, R]):
    """A durable step. Inside a workflow run its outcome is recorded; elsewhere it just runs."""

    def __init__(self, fn: Callable[P, R], name: str, retry: RetryPolicy,
                 checkpoints: CheckpointPolicy = PLAIN,
                 timeout_s: float | None = None) -> None:
        self.fn = fn
        self.name = name
        self.retry = retry
        self.checkpoints = checkpoints
        self.timeout_s = timeout_s
        self.codec = JsonCodec(fn, f"step {name!r}")
        functools.update_wrapper(self, fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        runner = current_runner.get()
        if runner is None:
            return self._run_detached(*args, **kwargs)
        result: R = runner.call_step(self, args, kwargs)
        return result

    def bind(self, *args: P.args, **kwargs: P.kwargs) -> StepCall[R]:
        """This step with its arguments, to run later as a branch of `gather`."""
        return StepCall(self, args, kwargs)

    def _run_detached(self, *args: P.args, **kwargs: P.kwargs) -> R:
        ctx = StepContext(
            run_id=None,
            step_key=f"{self.name}#0",
            attempt=1,
            last_checkpoint=None,
            checkpoint_sequence=0,
            sink=None,
        )
        token = current_step.set(ctx)
        try:
            return self.fn(*args, **kwargs)
        finally:
            current_step.reset(token)


@overload
def step(fn: Callable[P, R], /) -> Step[P, R]: ...
@overload
def step(
    *, name: str | None = None, retry: RetryPolicy | None = None,
    timeout: timedelta | float | None = None,
    checkpoint_version: int = 1, on_version_change: VersionPolicy = "restart",
    on_source_change: SourcePolicy = "restart", verify_effects: VerifyEffects | None = None,
    on_missing_effects: EffectsPolicy = "fallback",
) -> Callable[[Callable[P, R]], Step[P, R]]: ...


def step(
    fn: Callable[P, R] | None = None,
    /,
    *,
    name: str | None = None,
    retry: RetryPolicy | None = None,
    timeout: timedelta | float | None = None,
    checkpoint_version: int = 1,
    on_version_change: VersionPolicy = "restart",
    on_source_change: SourcePolicy = "restart",
    verify_effects: VerifyEffects | None = None,
    on_missing_effects: EffectsPolicy = "fallback",
) -> Step[P, R] | Callable[[Callable[P, R]], Step[P, R]]:
    """Declare a durable step; `retry` defaults to 3 attempts with exponential backoff.

    `timeout` (seconds or a timedelta) bounds each attempt: past it the attempt fails with a
    retryable `StepTimeoutError` (docs/controlling-runs.md says how, since Python cannot stop
    a thread).

    The other options say when a new attempt may trust the step's last checkpoint
    (`engine.checkpoints`, docs/architecture.md "Checkpoints a resume validates"):
    `checkpoint_version` is recorded with every checkpoint, and one written by another version
    goes through `on_version_change` (an upgrade function `(state, old_version) -> state`, or
    `restart`/`fail`); a checkpoint whose `source` fingerprint changed follows
    `on_source_change` (`restart`/`fail`/`trust`); with `verify_effects(keys, *args,
    **kwargs) -> missing keys`, missing effects resume from the last checkpoint whose effects
    verify (`on_missing_effects='fallback'`), or `restart`/`fail`.
    """
    timeout_s = seconds_of(timeout, "@step(timeout=...)")
    checks = CheckpointPolicy(checkpoint_version, on_version_change, on_source_change,
                              verify_effects, on_missing_effects)

    def wrap(f: Callable[P, R]) -> Step[P, R]:
        return Step(f, name or f.__name__, retry or DEFAULT_RETRY, checks, timeout_s)

    return wrap(fn) if fn is not None else wrap


class Workflow(Generic[P, R]):
    """A workflow: deterministic code that calls steps. Called directly, it runs undurably."""

    def __init__(
        self, fn: Callable[P, R], name: str, version: int, *, queue: str = "default",
        concurrency: int | None = None, timeout_s: float | None = None,
        schedule: str | None = None, schedule_tz: str = "UTC", schedule_missed: str = "latest",
    ) -> None:
        self.fn = fn
        # A cron schedule workers declare when they import the workflow (engine.schedules).
        self.schedule = schedule
        self.schedule_tz = schedule_tz
        self.schedule_missed = schedule_missed
        self.name = name
        self.version = version
        self.queue = queue
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.entrypoint = f"{fn.__module__}:{fn.__qualname__}"
        self.codec = JsonCodec(fn, f"workflow {name!r}")
        functools.update_wrapper(self, fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    @functools.cached_property
    def fingerprint(self) -> str:
        """Digest of the workflow body's source, recorded so a changed body can be noticed."""
        try:
            source = inspect.getsource(self.fn)
        except (OSError, TypeError):
            source = self.fn.__code__.co_code.hex()
        return hashlib.sha256(source.encode()).hexdigest()[:16]

    @functools.cached_property
    def _input_model(self) -> type[BaseModel]:
        hints = typing.get_type_hints(self.fn)
        fields: dict[str, Any] = {}
        for param in inspect.signature(self.fn).parameters.values():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise TypeError(
                    f"workflow {self.name!r} has *args/**kwargs; declare named parameters so "
                    "its input can be validated and recorded"
                )
            default = ... if param.default is param.empty else param.default
            fields[param.name] = (hints.get(param.name, Any), default)
        return create_model(
            f"{self.name}_input", __config__=ConfigDict(extra="forbid"), **fields
        )

    def normalize_input(self, data: Mapping[str, Any] | None) -> dict[str, Any]:
        """Validate input against the signature; return it as the JSON that gets recorded."""
        try:
            model = self._input_model.model_validate(dict(data or {}))
        except ValidationError as e:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'input'}: {err['msg']}"
                for err in e.errors()
            )
            raise InvalidInputError(
                f"input does not fit workflow {self.name!r} "
                f"(parameters: {self.describe_parameters()}): {problems}"
            ) from None
        dumped: dict[str, Any] = model.model_dump(mode="json")
        return dumped

    def bind_input(self, recorded: Mapping[str, Any]) -> dict[str, Any]:
        model = self._input_model.model_validate(dict(recorded))
        return {name: getattr(model, name) for name in type(model).model_fields}

    def describe_parameters(self) -> str:
        fields = self._input_model.model_fields
        parts = []
        for name, info in fields.items():
            ann = info.annotation
            text = f"{name}: {getattr(ann, '__name__', None) or str(ann).replace('typing.', '')}"
            parts.append(text if info.is_required() else f"{text} = {info.default!r}")
        return ", ".join(parts) or "none"


def workflow(
    name: str | None = None, *, version: int = 1, queue: str = "default",
    concurrency: int | None = None, timeout: timedelta | float | None = None,
    schedule: str | None = None, schedule_tz: str = "UTC", schedule_missed: str = "latest",
) -> Callable[[Callable[P, R]], Workflow[P, R]]:
    """Declare a workflow. `name` identifies its runs (and idempotency keys) across releases.

    Workers pick its runs from `queue`; `concurrency` caps how many of its runs are driven at
    once by all workers together (recorded in the store when a run is started). `timeout`
    gives each run a deadline that long after its start (unless the start names one): past
    it the run is stopped and ends `timed_out`. `schedule` (cron, in `schedule_tz`) starts a
    run on every tick, with its parameters' defaults, once a worker has imported it
    (`stepstone worker --import`); `schedule_missed` is the missed-tick policy
    (docs/messages.md).
    """
    timeout_s = seconds_of(timeout, "@workflow(timeout=...)")
    if callable(name):
        raise TypeError("use @workflow() or @workflow('name', version=1), with parentheses")
    if concurrency is not None and concurrency < 1:
        raise ValueError(f"@workflow(concurrency={concurrency}) must be at least 1 or None")

    def wrap(fn: Callable[P, R]) -> Workflow[P, R]:
        return Workflow(fn, name or fn.__name__, version, queue=queue, concurrency=concurrency,
                        timeout_s=timeout_s, schedule=schedule, schedule_tz=schedule_tz,
                        schedule_missed=schedule_missed)

    return wrap


def seconds_of(value: timedelta | float | None, where: str) -> float | None:
    """A duration given as seconds or a timedelta, checked to be positive."""
    if value is None:
        return None
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if not seconds > 0:  # also refuses NaN
        raise ValueError(f"{where} must be a positive duration, not {value!r}")
    return seconds

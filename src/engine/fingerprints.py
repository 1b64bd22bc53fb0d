"""Fingerprints of what a step reads, recorded with its checkpoints and checked on resume.

A fingerprint is self-describing: it names how to compute it again (a file's path, or a
module-level function and its arguments) next to the value it had, so the engine can check a
checkpoint on resume without the step's help, in whatever process resumes it. A function is
named by its topic (`module:qualname`), as the run's workflow is, and resolved the same way.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import Any, Literal

import orjson
from eventsourcing.utils import get_topic, resolve_topic
from pydantic import BaseModel, ConfigDict

MISSING_FILE = "missing"

FingerprintKind = Literal["file", "file_sha256", "function"]


class Fingerprint(BaseModel):
    """What a step was reading when it checkpointed: how to compute it, and its value then."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: FingerprintKind
    ref: str
    args: list[Any] = []
    value: str

    def current(self) -> str:
        """The value computed now, the same way (`MISSING_FILE` for a file that is gone)."""
        if self.kind == "function":
            fn: Callable[..., Any] = resolve_topic(self.ref)
            return str(fn(*self.args))
        return _file_value(self.ref, content=self.kind == "file_sha256")

    def describe(self) -> str:
        return f"{self.kind} {self.ref}" if self.kind != "function" else (
            f"{self.ref}({', '.join(orjson.dumps(a).decode() for a in self.args)})")


def file_fingerprint(path: str | os.PathLike[str], *, content: bool = False) -> Fingerprint:
    """A file's size and modification time (one `stat`), or with `content=True` the sha256 of
    its bytes (slower, but blind to a touch that changes nothing).

    The path is made absolute, so a resume from another working directory reads the same file.
    """
    where = os.path.abspath(path)
    return Fingerprint(kind="file_sha256" if content else "file", ref=where,
                       value=_file_value(where, content=content))


def function_fingerprint(fn: Callable[..., Any], *args: Any) -> Fingerprint:
    """`str(fn(*args))`: a table's max id, an upstream export id, a row count.

    `fn` must be a module-level function and `args` JSON values: a resume in another process
    calls it again by name with the same arguments.
    """
    qualname = getattr(fn, "__qualname__", "")
    if "<" in qualname or not getattr(fn, "__module__", None):
        raise ValueError(
            f"function_fingerprint needs a module-level function, not {qualname or fn!r}: a "
            "resume in another process must find it by name"
        )
    try:
        orjson.dumps(list(args))
    except TypeError as e:
        raise ValueError(f"function_fingerprint arguments must be JSON values: {e}") from None
    return Fingerprint(kind="function", ref=get_topic(fn), args=list(args), value=str(fn(*args)))


def _file_value(path: str, *, content: bool) -> str:
    try:
        if content:
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
            return digest.hexdigest()
        st = os.stat(path)
    except FileNotFoundError:
        return MISSING_FILE
    return f"size={st.st_size} mtime_ns={st.st_mtime_ns}"

"""Identity (DESIGN section 2): which run a workflow and key name, what input a run recorded,
and which workflow a recorded entrypoint names. Deterministic, so every process agrees.
"""

from __future__ import annotations

import hashlib
import importlib
import uuid
from collections.abc import Mapping
from typing import Any
from uuid import UUID

import orjson

from engine.definitions import Workflow
from engine.errors import WorkflowNotFoundError

_KEY_NAMESPACE = uuid.UUID("6f1d2c7e-8a43-5b8e-9c39-5b7f0e1a2d44")


def run_id_for_key(workflow_name: str, key: str) -> UUID:
    """Idempotency: the same workflow and key always name the same run."""
    return uuid.uuid5(_KEY_NAMESPACE, f"{workflow_name}\x00{key}")


def input_digest(recorded_input: Mapping[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(recorded_input, option=orjson.OPT_SORT_KEYS)).hexdigest()


def load_workflow(reference: str) -> Workflow[..., Any]:
    """Import `module:attribute` and check it is a workflow."""
    module_name, sep, attr = reference.partition(":")
    if not sep or not module_name or not attr:
        raise WorkflowNotFoundError(
            f"workflow reference {reference!r} must look like package.module:workflow_name"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise WorkflowNotFoundError(
            f"cannot import module {module_name!r} for workflow {reference!r}: {e}"
        ) from e
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise WorkflowNotFoundError(f"module {module_name!r} has no attribute {attr!r}")
    if not isinstance(obj, Workflow):
        raise WorkflowNotFoundError(
            f"{reference} is not a workflow (decorate it with @workflow(...))"
        )
    return obj

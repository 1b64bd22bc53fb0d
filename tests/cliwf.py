"""Workflows the CLI tests run by reference (`cliwf:NAME`)."""

from __future__ import annotations

from engine import step, workflow


@step
def add(a: int, b: int) -> int:
    return a + b


@step
def opaque() -> object:
    return object()


@workflow("cli-sum")
def summing(a: int, b: int = 1) -> dict[str, int]:
    return {"sum": add(a, b)}


@workflow("cli-unencodable")
def unencodable(n: int) -> object:
    first = add(n, n)
    return {"first": first, "bad": opaque()}


not_a_workflow = 42

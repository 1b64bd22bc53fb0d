"""The workflow of the example in docs/operations.md ("Testing your workflows"), verbatim."""

from engine import step, step_context, workflow
from engine.testing import IdempotencyLedger


@step
def charge(ledger: str, customer: str) -> str:
    with IdempotencyLedger(ledger) as led:
        led.apply(step_context().operation_id, {"customer": customer})
    return customer


@workflow("bill", version=1)
def bill(ledger: str, customers: list[str]) -> list[str]:
    return [charge(ledger, c) for c in customers]

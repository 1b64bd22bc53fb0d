"""Schemathesis over the OpenAPI document: no 5xx, and every answer matches its schema.

Driven through its Python API (an operation's hypothesis strategy and `call_and_validate`)
rather than its pytest plugin, whose fixture loader does not run under pytest 9 in
schemathesis 4.32. Examples are few per operation to keep the default run fast; the
hostile-parameter test in test_api_security.py covers the strings schemathesis may not draw.
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance
from world import World, client_for, world  # noqa: F401  (shared fixtures)


def test_every_operation_conforms_to_the_schema(world: World) -> None:
    with client_for(world.url, after_timeout_s=0.2) as client:
        schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
        # An open-ended stream has no end for a test to wait for; test_serve reads it live.
        schema = schema.exclude(path="/stream")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 9
        statuses: set[int] = set()
        for operation in operations:

            @given(case=operation.as_strategy())
            @settings(max_examples=25, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            def conforms(case: schemathesis.Case) -> None:
                # A cursor this API did not issue, or a position past the log's head, is
                # schema-valid and still a 422: constraints no schema can state.
                response = case.call_and_validate(excluded_checks=[positive_data_acceptance])
                assert response.status_code < 500
                statuses.add(response.status_code)

            conforms()
        assert {200, 404, 422} <= statuses

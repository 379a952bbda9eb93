"""Schemathesis over Studio's OpenAPI schema: generated requests, valid and not,
for every operation, against a live server, with a bounded number of examples each. No
answer may be a 5xx, and every answer must match the schema (status, content type, body).

No worker runs: submitted jobs only queue, which is all the API answers about."""

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
EXAMPLES = 8  # per operation and mode: about a minute on the build machines


def test_no_server_errors_and_answers_match_the_schema(studio_server, alice, token, tiny):
    schema = schemathesis.openapi.from_url(f"{studio_server.url}/api/v1/schema")
    headers = {"Authorization": f"Bearer {token(alice)}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 9
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=EXAMPLES, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            def check(case):
                case.call_and_validate(base_url=studio_server.url, headers=headers,
                                       checks=CHECKS)

            check()

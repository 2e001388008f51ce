"""Schemathesis against the live gateway's own OpenAPI document, on both backends.

Every answer must match the document (status, content type, headers, body schema) under all of
Schemathesis's checks, for valid and invalid input alike: no input produces a 5xx, and every
error is problem details with ``code`` and ``request_id``.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from idemgate.testing import GatewayServer

from .test_api import PROBLEM_MEMBERS

EXAMPLES_PER_OPERATION = 20
# A valid request may still meet the record's state: a held key (409), one claimed with another
# fingerprint (422), or a record absent (404).
CONFIG = schemathesis.Config.from_dict(
    {
        "checks": {
            "positive_data_acceptance": {"expected-statuses": ["2XX", "404", "409", "413", "422"]}
        }
    }
)


@pytest.mark.parametrize(
    "mode", [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE]
)
def test_every_answer_matches_the_document(
    gateway: GatewayServer, mode: schemathesis.GenerationMode
) -> None:
    schema = schemathesis.openapi.from_url(f"{gateway.url}/openapi.json", config=CONFIG)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 9

    @given(case=st.one_of(*(operation.as_strategy(mode) for operation in operations)))
    @settings(
        max_examples=EXAMPLES_PER_OPERATION * len(operations),
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def answers_match(case: schemathesis.Case) -> None:
        if mode is schemathesis.GenerationMode.POSITIVE and case.query:
            # A cursor is valid only as a page of the listing gave it: a made-up one is rightly
            # refused with a 400, which the negative mode's checks cover.
            case.query.pop("cursor", None)
        response = case.call(base_url=gateway.url)
        case.validate_response(response)
        assert response.status_code < 500, response.text
        if response.status_code >= 400:
            assert response.headers["content-type"][0] == "application/problem+json"
            problem = response.json()
            assert problem.keys() >= PROBLEM_MEMBERS
            assert problem["request_id"] == response.headers["x-request-id"][0]

    answers_match()

"""schemathesis over every operation that changes something (the GETs: test_openapi_conformance.py),
with an admin's token, against the suite's scratch model folder and database: no server error, and
every answer's status, content type and body as the spec documents them.

A fixed example budget per operation (derandomized: the same cases every run) keeps it to seconds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import hypothesis
import pytest
import schemathesis
from fastapi.testclient import TestClient
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.core.config import Settings
from app.main import create_app
from tests.support.tokens import ADMIN, bearer, get_token

CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance, content_type_conformance]
EXAMPLES = 8
CREDENTIALS = {"authorization", "x-api-key"}
# Every operation that is not a GET: a new one fails the test until it is listed here.
CHANGING = [
    "DELETE /api-keys/{key_id}",
    "DELETE /clients/{client_id}",
    "DELETE /model/canary",
    "DELETE /model/shadow",
    "DELETE /users/{username}",
    "POST /api-keys",
    "POST /clients",
    "POST /clients/{client_id}/disable",
    "POST /clients/{client_id}/rotate",
    "POST /feedback",
    "POST /logout",
    "POST /model/canary",
    "POST /model/canary/promote",
    "POST /model/promote",
    "POST /model/reload",
    "POST /model/rollback",
    "POST /model/shadow",
    "POST /models/import",
    "POST /predict",
    "POST /predict/csv",
    "POST /token",
    "POST /token/refresh",
    "POST /train",
    "POST /users",
    "POST /users/{username}/disable",
    "POST /v2/models/{name}/infer",
    "POST /v2/models/{name}/versions/{version}/infer",
    "PUT /users/{username}/scopes",
]


@pytest.fixture
def client(settings_factory: Callable[..., Settings]) -> Iterator[TestClient]:
    """The suite's client, without the /token limit per address: the fuzzer logs in many times."""
    with TestClient(create_app(settings_factory(rate_limit_token=""))) as test_client:
        yield test_client


def test_every_changing_operation_answers_as_documented(
    client: TestClient, subtests: pytest.Subtests
) -> None:
    schema = schemathesis.openapi.from_dict(client.get("/openapi.json").json())
    operations = [
        result.ok() for result in schema.get_all_operations() if result.ok().method.upper() != "GET"
    ]
    assert sorted(f"{op.method.upper()} {op.path}" for op in operations) == CHANGING
    for operation in operations:
        with subtests.test(operation=operation.label):

            @hypothesis.given(case=operation.as_strategy())
            @hypothesis.settings(
                max_examples=EXAMPLES,
                derandomize=True,
                database=None,
                deadline=None,
                suppress_health_check=list(hypothesis.HealthCheck),
            )
            def answers_as_documented(case: schemathesis.Case) -> None:
                # A new admin token each time: a case may log it out, or change the admin's scopes.
                # The admin's token, not the credentials the fuzzer makes up for the security schemes.
                for name in [k for k in case.headers or {} if k.lower() in CREDENTIALS]:
                    del case.headers[name]
                headers = bearer(get_token(client, *ADMIN)) | dict(case.headers or {})
                kwargs = case.as_transport_kwargs(base_url="http://testserver", headers=headers)
                kwargs.pop("base_url", None)
                try:
                    # Encoded before it is sent: a multipart field generated as a number is httpx's
                    # error, which the test client would otherwise raise inside the app.
                    request = client.build_request(**kwargs)
                    request.read()
                except (TypeError, AttributeError, ValueError):
                    hypothesis.reject()
                response = client.send(request)
                case.validate_response(response, checks=CHECKS)

            answers_as_documented()

"""Real answers against the OpenAPI spec the app serves: every read-only operation, checked by schemathesis.

The spec is the one GET /openapi.json returns (the /predict body comes from the loaded model).
The calls go through the suite's own TestClient: schemathesis' ASGI client would start the app's
lifespan a second time, and keep it running until the interpreter exits. schemathesis generates the
path parameters; its checks fail when a status code, a content type or a body is not what the spec
documents for the operation, so an answer that drifts from its declared model fails here.
"""

from __future__ import annotations

import hypothesis
import pytest
import schemathesis
from fastapi.testclient import TestClient
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.core.messages import AliasOutcome, GateOutcome, Job
from app.core.versions import now
from app.db.models import TrainingJobRow

CHECKS = [response_schema_conformance, status_code_conformance, content_type_conformance]
# Every GET of the spec: a new one fails the test until it is listed here, and is checked from then on.
READ_ONLY = [
    "/api-keys",
    "/clients",
    "/health",
    "/model-info",
    "/model/canary",
    "/models",
    "/monitoring",
    "/ready",
    "/train/{job_id}",
    "/users",
    "/v2",
    "/v2/health/live",
    "/v2/health/ready",
    "/v2/models/{name}",
    "/v2/models/{name}/ready",
    "/v2/models/{name}/versions/{version}",
    "/v2/models/{name}/versions/{version}/ready",
]
FINISHED_JOB = "f" * 32


@pytest.fixture
def api_schema(client: TestClient) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_dict(client.get("/openapi.json").json())


@pytest.fixture
def finished_job(client: TestClient) -> Job:
    """A promoted retraining job with every optional field set, as GET /train/{id} reads it."""
    job = Job(
        id=FINISHED_JOB,
        status="succeeded",
        user="admin",
        data="upload flowers.csv",
        include_feedback=True,
        created_at=now(),
        started_at=now(),
        finished_at=now(),
        version="v2",
        metric="f1_macro",
        metrics={"f1_macro": 0.97, "accuracy": 0.97},
        gate=GateOutcome(
            metric="f1_macro",
            challenger=0.97,
            tolerance=0.0,
            champion=0.9,
            champion_version="v1",
            passed=True,
            reason="0.97 >= 0.9",
        ),
        promoted=True,
        mlflow=AliasOutcome(status="skipped", reason="version v2 has no MLflow registry version"),
        feedback_rows=40,
        feedback_refused=2,
        message="promoted: now serving v2",
    )
    with client.app.state.services.database.session() as session:  # type: ignore[attr-defined]
        session.add(TrainingJobRow(id=job.id, status=job.status, created_at=0, record=job.model_dump_json()))
        session.commit()
    return job


def test_read_only_answers_match_the_spec(
    api_schema: schemathesis.BaseSchema,
    client: TestClient,
    admin_headers: dict[str, str],
    subtests: pytest.Subtests,
) -> None:
    operations = [result.ok() for result in api_schema.include(method="GET").get_all_operations()]
    assert sorted(op.path for op in operations) == READ_ONLY
    for operation in operations:
        with subtests.test(operation=operation.label):

            @hypothesis.given(case=operation.as_strategy())
            @hypothesis.settings(max_examples=5, derandomize=True, database=None, deadline=None)
            def answers_as_documented(case: schemathesis.Case) -> None:
                response = client.request(
                    case.method, case.formatted_path, params=case.query, headers=admin_headers
                )
                case.validate_response(response, checks=CHECKS)

            answers_as_documented()


def test_a_finished_job_matches_the_spec(
    api_schema: schemathesis.BaseSchema,
    client: TestClient,
    admin_headers: dict[str, str],
    finished_job: Job,
) -> None:
    # Generated job ids find no job (404): this one exists, so its 200 body is checked too.
    operation = api_schema["/train/{job_id}"]["GET"]
    case = operation.Case(path_parameters={"job_id": finished_job.id})
    response = client.get(case.formatted_path, headers=admin_headers)
    assert response.status_code == 200, response.text
    case.validate_response(response, checks=CHECKS)

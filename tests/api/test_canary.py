"""Canary releases through the API: the split and its stickiness, on two replicas; one version per
request; the steps; promotion and ending by hand; and the automatic rollbacks, on errors, latency and
live quality, timed from the breach to the champion answering everyone on every replica."""

from __future__ import annotations

import dataclasses
import itertools
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from app.adapters.model_store import ModelStore
from app.core.config import Settings
from app.core.security import create_access_token
from app.core.versions import VersionRecord, now
from app.main import create_app
from app.serving.predictor import Predictor
from app.serving.v2 import model_name
from app.serving.validation import RowError
from tests.api import test_shadow as shadow_tests
from tests.api.test_shadow import IRIS_ROWS, IRIS_TRUTH
from tests.support.models import write_model
from tests.support.tokens import SECRET, bearer

Headers = dict[str, str]
CANARY = "v2"


@pytest.fixture
def settings(settings_factory: Callable[..., Settings]) -> Settings:
    # Judged and followed quickly, so a test sees a rollback in a second or two.
    return settings_factory(
        max_batch_rows=200,
        watch_seconds=0.2,
        canary_check_seconds=0.1,
        canary_hold_seconds=0.5,
        canary_min_requests=10,
        canary_quality_min_labels=20,
        promotion_min_labels=20,
        # The tests send a row or a few again and again: inputs that drifted, for the drift guard; and
        # a request the machine delays past 50 ms would be a latency breach. Both guards have tests
        # of their own, which set their limits back.
        canary_max_psi=1000.0,
        canary_p99_floor_ms=60_000.0,
    )


@pytest.fixture
def challenger(settings: Settings, tmp_path: Path) -> str:
    """v2 in the store: a decision tree (100% on iris, where v1's logistic regression has 97%)."""
    folder = tmp_path / "challenger"
    write_model(folder, "iris", version=CANARY, candidate="decision_tree")
    ModelStore.from_url(settings.model_store_url, settings.model_cache_dir).publish(
        folder, VersionRecord(origin="pipeline", recorded_at=now())
    )
    return CANARY


def user_headers_for(name: str) -> Headers:
    """A predict token for `name`, signed as the service signs its own (no user row is needed)."""
    return bearer(create_access_token(name, ["predict"], secret=SECRET, expires=timedelta(minutes=5)))


def version_of(client: TestClient, headers: Headers, rows: list[dict[str, float]] | None = None) -> str:
    answer = client.post("/predict", json={"instances": rows or IRIS_ROWS[:1]}, headers=headers)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["model_version"])


def start(client: TestClient, admin: Headers, **plan: Any) -> Any:
    answer = client.post("/model/canary", json={"version": CANARY, **plan}, headers=admin)
    assert answer.status_code == 200, answer.text
    return answer.json()


def canary_on(client: TestClient) -> str | None:
    running = client.app.state.services.serving.canary  # type: ignore[attr-defined]
    return running.version if running is not None else None


def eventually(check: Callable[[], bool], seconds: float = 10.0) -> bool:
    return shadow_tests.eventually(check, seconds)


def within_binomial(count: int, trials: int, p: float) -> bool:
    """`count` of `trials` within 4.5 standard deviations of p: a false alarm about once in 150,000."""
    return abs(count - trials * p) <= 4.5 * math.sqrt(trials * p * (1 - p))


def rollbacks(reason: str) -> float:
    return REGISTRY.get_sample_value("predictor_canary_rollbacks_total", {"reason": reason}) or 0.0


@pytest.fixture
def second(settings: Settings, client: TestClient) -> Iterator[TestClient]:
    """Another replica of the same deployment: the same database and model store."""
    with TestClient(create_app(settings)) as replica:
        yield replica


def test_the_split_stays_within_binomial_bounds_at_10_and_50_percent(
    client: TestClient, admin_headers: Headers, challenger: str
) -> None:
    # By user at 10%: 2,000 users, each its own token.
    start(client, admin_headers, percent=10)
    users = [user_headers_for(f"user-{i}") for i in range(2000)]
    answered = Counter(version_of(client, headers) for headers in users)
    assert set(answered) == {"v1", CANARY}
    assert within_binomial(answered[CANARY], 2000, 0.10), answered
    assert client.request("DELETE", "/model/canary", headers=admin_headers).json()["ended"] == CANARY

    # Every request drawn anew at 50%: one user, 2,000 requests.
    start(client, admin_headers, percent=50, sticky_by="none")
    one = users[0]
    answered = Counter(version_of(client, one) for _ in range(2000))
    assert within_binomial(answered[CANARY], 2000, 0.50), answered
    # The prediction log keeps which version answered each.
    services = client.app.state.services  # type: ignore[attr-defined]
    assert services.prediction_log.flush()
    logged = Counter(r.logged.model_version for r in services.predictions.recent(5000))
    assert logged[CANARY] >= answered[CANARY] and logged["v1"] >= answered["v1"]
    requests = REGISTRY.get_sample_value(
        "predictor_model_requests_total", {"model_version": CANARY, "role": "canary"}
    )
    assert requests is not None and requests >= answered[CANARY]


def test_sticky_by_user_and_by_header_and_two_replicas_agree(
    client: TestClient, second: TestClient, admin_headers: Headers, challenger: str
) -> None:
    start(client, admin_headers, percent=25)
    assert eventually(lambda: canary_on(second) == CANARY)
    users = {f"user-{i}": user_headers_for(f"user-{i}") for i in range(120)}
    first = {name: version_of(client, headers) for name, headers in users.items()}
    assert set(first.values()) == {"v1", CANARY}
    for _ in range(2):  # the same user, the same version, on either replica
        assert {name: version_of(client, h) for name, h in users.items()} == first
        assert {name: version_of(second, h) for name, h in users.items()} == first
    assert client.request("DELETE", "/model/canary", headers=admin_headers).status_code == 200
    assert eventually(lambda: canary_on(second) is None)

    start(client, admin_headers, percent=50, sticky_by="header:X-Tenant")
    assert eventually(lambda: canary_on(second) == CANARY)
    one = users["user-0"]
    tenants = {f"tenant-{i}": one | {"X-Tenant": f"tenant-{i}"} for i in range(60)}
    by_tenant = {t: version_of(client, h) for t, h in tenants.items()}
    assert set(by_tenant.values()) == {"v1", CANARY}
    assert {t: version_of(second, h) for t, h in tenants.items()} == by_tenant
    assert {t: version_of(client, {**h, "x-tenant": h["X-Tenant"]}) for t, h in tenants.items()} == by_tenant
    # No header: the champion, every time.
    assert {version_of(client, one) for _ in range(30)} == {"v1"}


def test_a_share_grows_without_moving_a_client_off_the_canary(
    client: TestClient, admin_headers: Headers, challenger: str
) -> None:
    start(client, admin_headers, steps=[5, 25, 50], step_seconds=0, step_labels=0)
    users = [user_headers_for(f"user-{i}") for i in range(200)]
    seen: list[set[int]] = []

    def at_least(percent: int) -> bool:
        return int(client.get("/model/canary", headers=admin_headers).json()["canary"]["percent"]) >= percent

    for percent in (5, 25, 50):
        assert eventually(lambda: at_least(percent))  # noqa: B023 - called before the loop moves on
        plan = client.app.state.services.serving.canary.plan  # type: ignore[attr-defined]
        on = {i for i, h in enumerate(users) if version_of(client, h) == CANARY}
        seen.append(on)
        if plan.percent == 50:
            break
    assert all(earlier <= later for earlier, later in itertools.pairwise(seen))
    assert seen[-1] and len(seen[-1]) < len(users)


def test_a_csv_file_and_a_v2_batch_are_each_answered_by_one_version(
    client: TestClient, admin_headers: Headers, challenger: str
) -> None:
    start(client, admin_headers, percent=50, sticky_by="none")
    user = user_headers_for("user-csv")
    header = ",".join(IRIS_ROWS[0])
    body = header + "\n" + "\n".join(",".join(str(v) for v in row.values()) for row in IRIS_ROWS) + "\n"
    csv_versions, v2_versions = set(), set()
    tensors = {
        "inputs": [
            {
                "name": name,
                "shape": [len(IRIS_ROWS)],
                "datatype": "FP64",
                "data": [r[name] for r in IRIS_ROWS],
            }
            for name in IRIS_ROWS[0]
        ]
    }
    name = model_name(client.app.state.services.serving.current.metadata)  # type: ignore[attr-defined]
    for _ in range(12):
        answer = client.post("/predict/csv", content=body, headers=user | {"Content-Type": "text/csv"})
        assert answer.status_code == 200, answer.text
        document = answer.json()
        versions = {document["model_version"]} | {answer.headers["X-Model-Version"]}
        assert len(versions) == 1 and len(document["predictions"]) == len(IRIS_ROWS)
        csv_versions |= versions
        inferred = client.post(f"/v2/models/{name}/infer", json=tensors, headers=user)
        assert inferred.status_code == 200, inferred.text
        v2_versions.add(inferred.json()["model_version"])
    assert csv_versions == {"v1", CANARY} and v2_versions == {"v1", CANARY}


def test_refusals(
    client: TestClient,
    admin_headers: Headers,
    user_headers: Headers,
    challenger: str,
    settings: Settings,
    tmp_path: Path,
) -> None:
    def refused(payload: dict[str, Any], headers: Headers = admin_headers) -> tuple[int, Any]:
        answer = client.post("/model/canary", json=payload, headers=headers)
        return answer.status_code, answer.json()["detail"]

    for payload in (
        {"version": CANARY},  # no share
        {"version": CANARY, "percent": 0},
        {"version": CANARY, "percent": 51},
        {"version": CANARY, "steps": [25, 5]},
        {"version": CANARY, "steps": [5, 60]},
        {"version": CANARY, "percent": 10, "steps": [5, 25]},
        {"version": CANARY, "percent": 10, "sticky_by": "cookie"},
        {"version": CANARY, "percent": 10, "sticky_by": "header:"},
        {"version": CANARY, "percent": 10, "sticky_by": "header:a b"},
        {"version": CANARY, "percent": 10, "color": "red"},
        {"version": "", "percent": 10},
    ):
        status, detail = refused(payload)
        assert status == 422, payload
        assert detail[0]["msg"], detail
    assert refused({"version": CANARY, "percent": 10}, user_headers)[0] == 403
    assert refused({"version": "nope", "percent": 10}) == (404, "unknown model version 'nope'")
    status, detail = refused({"version": "v1", "percent": 10})
    assert status == 409 and "is the champion" in detail

    # Another task's model does not fit the champion's rows.
    colors = tmp_path / "colors"
    write_model(colors, "colors", version="colors-v1")
    ModelStore.from_url(settings.model_store_url, settings.model_cache_dir).publish(
        colors, VersionRecord(origin="pipeline", recorded_at=now())
    )
    status, detail = refused({"version": "colors-v1", "percent": 10})
    assert status == 409 and "regression model" in detail

    # The shadow and the canary are different versions; both may run at once.
    assert client.post("/model/shadow", json={"version": CANARY}, headers=admin_headers).status_code == 200
    status, detail = refused({"version": CANARY, "percent": 10})
    assert status == 409 and "is the shadow" in detail
    client.request("DELETE", "/model/shadow", headers=admin_headers)
    start(client, admin_headers, percent=10)
    status, detail = refused({"version": CANARY, "percent": 20})
    assert status == 409 and "runs already" in detail
    shadow = client.post("/model/shadow", json={"version": CANARY}, headers=admin_headers)
    assert shadow.status_code == 409
    # Nothing changed by the refusals.
    state = client.get("/model/canary", headers=user_headers).json()
    assert state["canary"]["percent"] == 10 and state["last_decision"]["action"] == "started"


def test_models_and_model_info_show_the_canary_and_its_share(
    client: TestClient, admin_headers: Headers, user_headers: Headers, challenger: str
) -> None:
    assert client.get("/models", headers=user_headers).json()["canary"] is None
    start(client, admin_headers, steps=[10, 30], step_seconds=3600, sticky_by="header:X-Tenant")
    listing = client.get("/models", headers=user_headers).json()
    assert listing["canary"] == {"version": CANARY, "percent": 10, "step": 0, "steps": [10, 30]}
    flags = {v["version"]: (v["serving"], v["canary"]) for v in listing["versions"]}
    assert flags == {"v1": (True, False), CANARY: (False, True)}
    info = client.get("/model-info", headers=user_headers).json()
    assert info["version"] == "v1"
    assert info["canary"] == {"version": CANARY, "percent": 10, "step": 0, "steps": [10, 30]}
    state = client.get("/model/canary", headers=user_headers).json()
    assert state["canary"]["sticky_by"] == "header:X-Tenant" and state["model_version"] == "v1"

    def waiting_for() -> str:
        return client.get("/model/canary", headers=user_headers).json()["waiting_for"] or ""

    assert eventually(lambda: "s more at 10% (step_seconds)" in waiting_for())


def send_truth(client: TestClient, admin: Headers, answers: list[dict[str, Any]], truth: list[str]) -> None:
    """The ground truth of one-row answers, in their order, through POST /feedback."""
    assert client.app.state.services.prediction_log.flush()  # type: ignore[attr-defined]
    items = [
        {"prediction_id": a["predictions"][0]["prediction_id"], "label": label}
        for a, label in zip(answers, truth, strict=True)
    ]
    for first in range(0, len(items), 500):
        done = client.post("/feedback", json={"items": items[first : first + 500]}, headers=admin)
        assert done.status_code == 200, done.text


def test_steps_advance_by_themselves_and_one_is_held_back_by_too_few_labels(
    client: TestClient, admin_headers: Headers, challenger: str
) -> None:
    start(client, admin_headers, steps=[10, 30], step_seconds=0, step_labels=15, sticky_by="none")

    def state() -> Any:
        return client.get("/model/canary", headers=admin_headers).json()

    assert eventually(lambda: state()["last_decision"]["action"] == "held")
    held = state()
    assert held["canary"]["percent"] == 10 and "15 needed (step_labels)" in held["waiting_for"]
    assert "labelled predictions of the canary" in held["last_decision"]["reason"]

    user = user_headers_for("user-steps")
    answers = [
        client.post("/predict", json={"instances": [row]}, headers=user).json() for row in IRIS_ROWS * 2
    ]
    # The truth: both models are about as good, so the quality guard holds.
    send_truth(client, admin_headers, answers, IRIS_TRUTH * 2)
    assert eventually(lambda: state()["canary"]["percent"] == 30)
    advanced = state()
    assert advanced["canary"]["step"] == 1 and advanced["last_decision"]["action"] == "advanced"
    assert advanced["last_decision"]["by"] == "guard"
    # At the last step, without auto_promote, it waits for an admin.
    assert eventually(lambda: "POST /model/canary/promote" in (state()["waiting_for"] or ""))


def test_promote_and_end_by_hand(
    client: TestClient, second: TestClient, admin_headers: Headers, user_headers: Headers, challenger: str
) -> None:
    def promote() -> tuple[int, Any]:
        answer = client.post("/model/canary/promote", headers=admin_headers)
        return answer.status_code, answer.json()

    assert promote() == (409, {"detail": "no canary to promote: POST /model/canary first"})
    ended = client.request("DELETE", "/model/canary", headers=admin_headers)
    assert ended.json() == {"canary": None, "ended": None}

    start(client, admin_headers, percent=50, sticky_by="none")
    assert client.post("/model/canary/promote", headers=user_headers).status_code == 403
    status, body = promote()
    assert status == 409 and body["detail"]["labelled"] == 0 and body["detail"]["canary_version"] == CANARY

    # Ground truth for both models' answers: v2 (the tree) is right on all of iris.
    answers = [
        client.post("/predict", json={"instances": [row]}, headers=user_headers).json() for row in IRIS_ROWS
    ]
    send_truth(client, admin_headers, answers, IRIS_TRUTH)
    status, body = promote()
    assert status == 200, body
    assert (body["previous_version"], body["model_version"]) == ("v1", CANARY)
    assert body["evidence"]["metric"] == "accuracy" and body["evidence"]["canary"] == 1.0
    assert body["evidence"]["labelled"] >= 20
    pointer = client.app.state.services.serving.pointer.get()  # type: ignore[attr-defined]
    assert (pointer.version, pointer.canary) == (CANARY, None)
    assert pointer.canary_decision.action == "promoted"
    assert eventually(lambda: second.get("/health").json()["model_version"] == CANARY)
    assert canary_on(second) is None and canary_on(client) is None
    assert {version_of(client, user_headers) for _ in range(20)} == {CANARY}


def fail_canary_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """The canary's model has no answer for rows with a long petal (a third of iris)."""
    real = Predictor.infer

    def infer(self: Predictor, matrix: np.ndarray) -> Any:
        if self.version == CANARY and (matrix[:, 2] > 5.0).any():
            rows = np.flatnonzero(matrix[:, 2] > 5.0)
            raise RowError([{"row": int(r), "field": None, "msg": "no finite answer"} for r in rows])
        return real(self, matrix)

    monkeypatch.setattr(Predictor, "infer", infer)


def slow_canary(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """The canary's model takes `seconds` a call, waiting as a model in native code does: its calls
    are counted slow, so they are made in the scoring threads (a sleep takes no CPU time, which is
    what the call time is measured in) and the champion's requests do not wait behind them."""
    real = Predictor.infer

    def infer(self: Predictor, matrix: np.ndarray) -> Any:
        if self.version == CANARY:
            self.call_time.mean = 1.0
            time.sleep(seconds)
        return real(self, matrix)

    monkeypatch.setattr(Predictor, "infer", infer)


class Traffic:
    """One-row predictions from a thread per replica until stopped; every status counted."""

    def __init__(self, replicas: list[TestClient], headers: Headers) -> None:
        self.statuses: Counter[int] = Counter()
        self.versions: Counter[str] = Counter()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(r, headers)) for r in replicas]

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _run(self, client: TestClient, headers: Headers) -> None:
        i = 0
        while not self._stop.is_set():
            answer = client.post(
                "/predict", json={"instances": [IRIS_ROWS[i % len(IRIS_ROWS)]]}, headers=headers
            )
            self.statuses[answer.status_code] += 1
            if answer.status_code == 200:
                self.versions[answer.json()["model_version"]] += 1
            i += 7


def rolled_back_everywhere(
    client: TestClient, second: TestClient, admin: Headers, guard: str
) -> tuple[float, dict[str, Any]]:
    """Wait for the rollback; the seconds from the breach's start to the last replica dropping it."""
    guards = [r.app.state.services.canary_guard for r in (client, second)]  # type: ignore[attr-defined]
    breached: list[float] = []

    def seen() -> bool:
        for each in guards:
            if guard in each.breached_since and not breached:
                breached.append(time.time())
        return canary_on(client) is None and canary_on(second) is None

    assert eventually(seen, 30), "the canary was not rolled back"
    done = time.time()
    state = client.get("/model/canary", headers=admin).json()
    decision = state["last_decision"]
    assert state["canary"] is None and decision["action"] == "rolled_back" and decision["by"] == "guard"
    assert decision["reason"].startswith(f"{guard} guard breached")
    assert breached, "no replica saw the breach"
    print(f"{guard}: rolled back on every replica {done - breached[0]:.2f} s after the breach was seen")
    return done - breached[0], decision


def test_a_canary_failing_rows_is_rolled_back_on_every_replica(
    client: TestClient,
    second: TestClient,
    admin_headers: Headers,
    challenger: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fail_canary_rows(monkeypatch)
    before = rollbacks("errors")
    start(client, admin_headers, percent=50, sticky_by="none")
    assert eventually(lambda: canary_on(second) == CANARY)
    with Traffic([client, second], user_headers_for("user-load")) as traffic:
        seconds, decision = rolled_back_everywhere(client, second, admin_headers, "errors")
    assert traffic.statuses[422] > 0 and traffic.statuses[500] == 0
    assert decision["figures"]["errors_value"] > decision["figures"]["errors_limit"]
    assert rollbacks("errors") == before + 1  # decided once, by one replica
    # From the breach to every replica's champion answering everyone: the hold, a check, a watch tick.
    assert seconds < 0.5 + 0.1 + 0.2 + 3.0, seconds
    assert {version_of(second, user_headers_for("user-after")) for _ in range(20)} == {"v1"}


def test_a_slow_canary_is_rolled_back_in_the_middle_of_load_and_no_request_fails(
    client: TestClient,
    second: TestClient,
    admin_headers: Headers,
    challenger: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slow_canary(monkeypatch, 0.08)
    for replica in (client, second):
        guard = replica.app.state.services.canary_guard  # type: ignore[attr-defined]
        guard.limits = dataclasses.replace(guard.limits, p99_floor_seconds=0.05)
    before = rollbacks("latency")
    start(client, admin_headers, percent=50, sticky_by="none")
    assert eventually(lambda: canary_on(second) == CANARY)
    with Traffic([client, second, client, second], user_headers_for("user-load")) as traffic:
        seconds, decision = rolled_back_everywhere(client, second, admin_headers, "latency")
        time.sleep(0.3)  # load goes on after the rollback too
    assert set(traffic.statuses) == {200}, traffic.statuses
    assert traffic.versions[CANARY] > 0 and traffic.versions["v1"] > 0
    assert decision["figures"]["latency_value"] > 0.05
    assert rollbacks("latency") == before + 1
    assert seconds < 0.5 + 0.1 + 0.2 + 3.0, seconds


def test_a_canary_worse_on_live_feedback_is_rolled_back(
    client: TestClient, second: TestClient, admin_headers: Headers, challenger: str
) -> None:
    before = rollbacks("quality")
    start(client, admin_headers, percent=50, sticky_by="none")
    assert eventually(lambda: canary_on(second) == CANARY)
    user = user_headers_for("user-quality")
    answers = [client.post("/predict", json={"instances": [row]}, headers=user).json() for row in IRIS_ROWS]
    assert {a["model_version"] for a in answers} == {"v1", CANARY}
    # The ground truth says the champion was right and the canary wrong, every time.
    wrong = {"setosa": "virginica", "versicolor": "setosa", "virginica": "versicolor"}
    items = []
    for a in answers:
        (prediction,) = a["predictions"]
        truth = wrong[prediction["label"]] if a["model_version"] == CANARY else prediction["label"]
        items.append({"prediction_id": prediction["prediction_id"], "label": truth})
    assert client.app.state.services.prediction_log.flush()  # type: ignore[attr-defined]
    sent = time.time()
    assert client.post("/feedback", json={"items": items}, headers=admin_headers).status_code == 200
    seconds, decision = rolled_back_everywhere(client, second, admin_headers, "quality")
    assert decision["figures"]["quality_value"] == 0.0 and decision["figures"]["quality_limit"] == 0.95
    assert rollbacks("quality") == before + 1
    assert seconds < 0.5 + 0.1 + 0.2 + 3.0, seconds
    assert time.time() - sent < 10


def test_a_canary_whose_inputs_drifted_is_rolled_back(
    client: TestClient, second: TestClient, admin_headers: Headers, challenger: str
) -> None:
    guard = client.app.state.services.canary_guard  # type: ignore[attr-defined]
    guard.limits = dataclasses.replace(guard.limits, max_psi=0.2)
    before = rollbacks("drift")
    start(client, admin_headers, percent=50, sticky_by="none")
    user = user_headers_for("user-drift")
    # One row only, again and again: nothing like the training data's spread.
    deadline = time.monotonic() + 15
    while canary_on(client) is not None and time.monotonic() < deadline:
        version_of(client, user)
    state = client.get("/model/canary", headers=admin_headers).json()
    decision = state["last_decision"]
    assert decision["action"] == "rolled_back" and decision["reason"].startswith("drift guard breached")
    assert decision["figures"]["drift_value"] > 0.2
    assert rollbacks("drift") == before + 1
    assert eventually(lambda: canary_on(second) is None)

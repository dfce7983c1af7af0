"""The Streamlit app through streamlit.testing.v1.AppTest, against a real API on a free port."""

from __future__ import annotations

import time

import httpx
import pytest
from streamlit.testing.v1 import AppTest

from tests.support.models import IRIS_ROW
from tests.support.paths import STREAMLIT_APP
from tests.support.servers import wait_until
from tests.support.tokens import ADMIN, USER, login

pytestmark = pytest.mark.usefixtures("ui_env")
TIMEOUT = 30
SERVING, OLDER = "2026-11-23T08-00-00", "2026-11-22T08-00-00"
NO_CANARY = "No canary runs: the champion answers every request."


def logged_in(user: tuple[str, str]) -> AppTest:
    app = AppTest.from_file(STREAMLIT_APP, default_timeout=TIMEOUT).run()
    app.text_input[0].input(user[0])
    app.text_input[1].input(user[1])
    app.button[0].click().run()
    assert not app.exception, app.exception
    return app


def texts(elements) -> list[str]:
    return [str(element.value) for element in elements]


def test_a_wrong_password_is_told_plainly() -> None:
    app = AppTest.from_file(STREAMLIT_APP, default_timeout=TIMEOUT).run()
    app.text_input[0].input(USER[0])
    app.text_input[1].input("not-the-password")
    app.button[0].click().run()
    assert texts(app.error) == ["Login failed: wrong username or password"]
    assert "token" not in app.session_state


def test_predict_form_comes_from_the_schema_and_shows_label_chart_and_candidates() -> None:
    app = logged_in(USER)
    inputs = {n.label: n for n in app.number_input}
    assert list(inputs) == ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    # Within the training ranges.
    assert inputs["petal_length"].min == 1.0 and inputs["petal_length"].max == 6.9
    inputs["sepal_length"].set_value(5.1)
    inputs["sepal_width"].set_value(3.5)
    inputs["petal_length"].set_value(1.4)
    inputs["petal_width"].set_value(0.2)
    app.button[0].click().run()
    assert not app.exception and not app.error, texts(app.error)
    assert texts(app.success) == ["Predicted: setosa"]
    assert app.get("arrow_vega_lite_chart") or app.get("vega_lite_chart")
    comparison = app.dataframe[0].value
    assert list(comparison["candidate"]) == ["logistic_regression (champion)", "decision_tree", "knn"]
    assert list(comparison["prediction"]) == ["setosa"] * 3
    assert "test f1_macro" in comparison.columns


def test_batch_shows_predictions_and_row_errors() -> None:
    app = logged_in(USER)
    app.sidebar.radio[0].set_value("Batch").run()
    header = "sepal_length,sepal_width,petal_length,petal_width"
    app.text_area[0].input(f"{header}\n5.1,3.5,1.4,0.2\n6.7,3.0,5.2,2.3\n")
    app.button[0].click().run()
    assert texts(app.success) == ["2 rows predicted"]
    assert list(app.dataframe[0].value["label"]) == ["setosa", "virginica"]
    assert app.get("download_button")

    app.text_area[0].input(f"{header}\n5.1,3.5,1.4,0.2\n6.7,wide,5.2,2.3\n")
    app.button[0].click().run()
    assert texts(app.error)[0].startswith("The CSV was refused: line 3, row 1, field sepal_width")
    errors = app.dataframe[0].value
    assert list(errors["line"]) == [3] and list(errors["field"]) == ["sepal_width"]


def test_an_expired_session_goes_back_to_the_login_with_a_message() -> None:
    app = logged_in(USER)
    app.session_state["token"] = "expired.or.tampered"
    app.run()
    assert texts(app.warning) == ["Your session has expired: please log in again."]
    assert app.button[0].label == "Log in"


def test_logout() -> None:
    app = logged_in(USER)
    app.sidebar.button[0].click().run()
    assert texts(app.warning) == ["You are logged out."]
    assert "token" not in app.session_state


def test_model_page_for_a_user_has_no_admin_actions() -> None:
    app = logged_in(USER)
    app.sidebar.radio[0].set_value("Model").run()
    assert app.metric[0].value == SERVING
    assert [s.value for s in app.subheader] == ["Versions"]
    # Where each version came from: the pipeline's own have no source, nor parity to show.
    versions = app.dataframe[1].value
    assert list(versions["origin"]) == ["pipeline", "pipeline"]
    assert list(versions["source"]) == ["", ""] and list(versions["parity"]) == ["", ""]


def test_admin_rolls_back_and_sees_a_failed_job_explained() -> None:
    app = logged_in(ADMIN)
    app.sidebar.radio[0].set_value("Model").run()
    assert [s.value for s in app.subheader] == ["Versions", "Retrain", "Roll back"]
    versions = app.dataframe[1].value
    assert list(versions["version"]) == [SERVING, OLDER]
    assert list(versions["serving"]) == ["yes", ""]

    def roll_back(to: str) -> None:
        app.selectbox(key="rollback-version").set_value(to)
        button(app, "Roll back").click().run()
        assert not app.error, texts(app.error)
        assert texts(app.success)[0].startswith(f"Now serving {to}")

    roll_back(OLDER)
    app.run()
    assert app.metric[0].value == OLDER
    roll_back(SERVING)

    # This API's params name a data file that is not there: the job fails, and says why in one line.
    button(app, "Start retraining").click().run()
    assert not app.error, texts(app.error)
    deadline = time.monotonic() + 60
    while not app.error and time.monotonic() < deadline:
        time.sleep(0.5)
        app.run()
    message = texts(app.error)[0]
    assert (
        message.startswith("Job ")
        and " failed: " in message
        and "data.source: file 'data/input/missing.csv' not found" in message
    )


def button(app: AppTest, label: str):
    return next(b for b in app.button if b.label == label)


def test_monitoring_is_an_admin_page_of_quality_drift_shadow_and_feedback(ui_env: str) -> None:
    user = logged_in(USER)
    assert "Monitoring" not in user.sidebar.radio[0].options

    headers = login(ui_env, *ADMIN)
    rows = [IRIS_ROW, {"sepal_length": 6.7, "sepal_width": 3.0, "petal_length": 5.2, "petal_width": 2.3}]
    answer = httpx.post(f"{ui_env}/predict", json={"instances": rows}, headers=headers, timeout=10).json()
    ids = [p["prediction_id"] for p in answer["predictions"]]

    def logged() -> bool:
        report = httpx.get(f"{ui_env}/monitoring", headers=headers, timeout=10).json()
        return set(ids) <= {r["prediction_id"] for r in report["recent"]}

    wait_until(logged, 10, "the predictions in the log")
    app = logged_in(ADMIN)
    app.sidebar.radio[0].set_value("Monitoring").run()
    assert not app.exception and not app.error, texts(app.error)
    sections = ["Live quality", "Drift", "Shadow challenger", "Canary", "Recent predictions"]
    assert [s.value for s in app.subheader] == sections
    unlabelled = "No labelled predictions in the last 24 h: send ground truth with POST /feedback."
    assert unlabelled in texts(app.info)
    assert "No shadow challenger answered in the last 24 h." in texts(app.info)
    # No canary runs (another test's may have run before: then the line ends with its last decision).
    assert any(t.startswith(NO_CANARY) for t in texts(app.info)), texts(app.info)

    truths = {"items": [{"prediction_id": i, "label": "setosa"} for i in ids]}
    assert httpx.post(f"{ui_env}/feedback", json=truths, headers=headers, timeout=10).json()["recorded"] == 2
    app.run()
    assert unlabelled not in texts(app.info)
    versions, drift, recent = (table.value for table in app.dataframe)
    serving = versions.set_index("version").loc[SERVING]
    # Only these two are labelled: the first is setosa, the second virginica, so one of two is right.
    assert serving["labelled"] == 2 and serving["accuracy"] == 0.5
    assert sorted(drift["feature"]) == ["petal_length", "petal_width", "sepal_length", "sepal_width"]
    newest = recent.set_index("prediction id").loc[ids]
    assert list(newest["prediction"]) == ["setosa", "virginica"]
    assert list(newest["truth"]) == ["setosa", "setosa"]
    assert app.get("arrow_vega_lite_chart") or app.get("vega_lite_chart")
    # The drift bars follow the chosen feature.
    app.selectbox(key="mon-feature").set_value("sepal_width").run()
    assert not app.exception

    # The older version shadows the champion: it answers both rows as the champion does.
    shadow = httpx.post(f"{ui_env}/model/shadow", json={"version": OLDER}, headers=headers, timeout=30)
    assert shadow.status_code == 200, shadow.text
    try:
        httpx.post(f"{ui_env}/predict", json={"instances": rows}, headers=headers, timeout=10)

        def shadowed() -> bool:
            report = httpx.get(f"{ui_env}/monitoring", headers=headers, timeout=10).json()
            return any(v["compared"] >= 2 for v in report["shadow"]["versions"])

        wait_until(shadowed, 15, "the shadow's answers in the log")
        app.run()
        metrics = {m.label: m.value for m in app.metric}
        assert metrics["Shadow version"] == OLDER
        assert metrics["Agrees with the champion"].endswith("%")
    finally:
        httpx.delete(f"{ui_env}/model/shadow", headers=headers, timeout=30)


def test_admin_sees_the_canary_ends_it_and_is_told_why_it_is_not_promoted(ui_env: str) -> None:
    headers = login(ui_env, *ADMIN)

    def canary() -> dict:
        return httpx.get(f"{ui_env}/model/canary", headers=headers, timeout=10).json()

    def start() -> None:
        body = {"version": OLDER, "percent": 20}
        answer = httpx.post(f"{ui_env}/model/canary", json=body, headers=headers, timeout=30)
        assert answer.status_code == 200, answer.text
        wait_until(lambda: len(canary()["guards"]) == 4, 15, "the canary's guards judged")

    try:
        start()
        app = logged_in(ADMIN)
        app.sidebar.radio[0].set_value("Monitoring").run()
        assert not app.exception and not app.error, texts(app.error)
        subheaders = [s.value for s in app.subheader]
        assert subheaders[subheaders.index("Shadow challenger") + 1] == "Canary"
        metrics = {m.label: m.value for m in app.metric}
        assert metrics["Canary version"] == OLDER and metrics["Share"] == "20%"
        assert metrics["Step"] == "—" and metrics["Champion version"] == SERVING
        guards = next(t.value for t in app.dataframe if "guard" in t.value.columns)
        assert sorted(guards["guard"]) == ["drift", "errors", "latency", "quality"]
        assert list(guards.columns[:5]) == ["guard", "breached", "value", "limit", "detail"]
        assert any(c.startswith("Waiting for: ") for c in texts(app.caption)), texts(app.caption)

        button(app, "End canary").click().run()
        assert not app.exception and not app.error, texts(app.error)
        assert texts(app.success) == [f"Canary {OLDER} ended: the champion {SERVING} answers everyone again."]
        # The section now shows no canary, and why the last one stopped.
        assert f"{NO_CANARY} Last: canary {OLDER} ended: ended by {ADMIN[0]}" in " ".join(texts(app.info))
        assert not any(m.label == "Canary version" for m in app.metric)
        after = canary()
        assert after["canary"] is None
        assert after["last_decision"]["action"] == "ended" and after["last_decision"]["version"] == OLDER

        # A second canary, promoted at once: refused, for it has no labelled predictions yet; one line.
        start()
        app.run()
        button(app, "Promote canary").click().run()
        assert not app.exception and not app.error, texts(app.error)
        assert not app.success
        (refusal,) = texts(app.warning)
        assert refusal.startswith("Promotion refused: ") and "labelled predictions" in refusal, refusal
        assert "PROMOTION_MIN_LABELS" in refusal and "{" not in refusal and "\n" not in refusal
        # Still the canary, the champion unchanged.
        metrics = {m.label: m.value for m in app.metric}
        assert metrics["Canary version"] == OLDER and metrics["Champion version"] == SERVING
        app.run()  # shown once
        assert not app.warning
    finally:
        httpx.delete(f"{ui_env}/model/canary", headers=headers, timeout=30)


def test_access_is_an_admin_page() -> None:
    assert "Access" not in logged_in(USER).sidebar.radio[0].options
    assert "Access" in logged_in(ADMIN).sidebar.radio[0].options


def access(app: AppTest) -> AppTest:
    app.sidebar.radio[0].set_value("Access").run()
    assert not app.exception and not app.error, texts(app.error)
    assert [s.value for s in app.subheader] == ["API keys", "Service clients"]
    return app


def test_admin_creates_an_api_key_sees_it_once_and_revokes_it(ui_env: str) -> None:
    app = access(logged_in(ADMIN))
    # The scopes offered are the admin's own.
    assert sorted(app.multiselect(key="key-scopes").options) == sorted(app.session_state["scopes"])
    app.text_input(key="key-name").input("ui-ci")
    app.multiselect(key="key-scopes").set_value(["predict"])
    app.number_input(key="key-days").set_value(30)
    app.text_input(key="key-owner").input(USER[0])
    button(app, "Create API key").click().run()
    assert not app.exception and not app.error, texts(app.error)
    secret = app.code[0].value
    assert secret.startswith("pk_")
    assert "Copy it now: it is not shown again." in texts(app.warning)
    keys = app.dataframe[0].value
    key_id = keys.loc[keys["name"] == "ui-ci", "id"].item()
    assert texts(app.success) == [f"API key {key_id} (ui-ci) created for {USER[0]}; the key:"]

    # The key works, for its owner's scopes.
    answer = httpx.post(
        f"{ui_env}/predict", json={"instances": [IRIS_ROW]}, headers={"X-API-Key": secret}, timeout=10
    )
    assert answer.status_code == 200, answer.text

    app.run()  # any next run: the secret is gone, the key is listed without it
    assert not app.code and "Copy it now: it is not shown again." not in texts(app.warning)
    keys = app.dataframe[0].value.set_index("id")
    assert list(keys.columns) == ["name", "owner", "scopes", "created", "expires", "last used", "status"]
    row = keys.loc[key_id]
    assert row[["owner", "scopes", "status"]].tolist() == [USER[0], "predict", "active"]
    assert row["expires"] != "never"
    assert secret not in app.dataframe[0].value.to_csv()

    app.selectbox(key="access-key").set_value(key_id)
    button(app, "Revoke key").click().run()
    assert not app.error, texts(app.error)
    assert texts(app.success) == [f"API key {key_id} revoked."]
    assert app.dataframe[0].value.set_index("id").loc[key_id, "status"] == "revoked"
    assert not any(o.startswith(f"{key_id}:") for o in options(app, "access-key"))

    def refused() -> bool:
        headers = {"X-API-Key": secret}
        response = httpx.post(
            f"{ui_env}/predict", json={"instances": [IRIS_ROW]}, headers=headers, timeout=10
        )
        return response.status_code == 401

    wait_until(refused, 15, "the revoked key refused")


def test_an_api_error_on_the_access_page_is_one_readable_line() -> None:
    app = access(logged_in(ADMIN))
    app.text_input(key="key-name").input("for-nobody")
    app.text_input(key="key-owner").input("nobody-at-all")
    button(app, "Create API key").click().run()
    assert texts(app.error) == ["Error: no user or client 'nobody-at-all'"]
    assert not app.code
    assert [s.value for s in app.subheader] == ["API keys", "Service clients"]


def test_admin_creates_a_client_and_rotates_its_secret(ui_env: str) -> None:
    app = access(logged_in(ADMIN))
    app.text_input(key="client-name").input("ui-billing")
    app.multiselect(key="client-scopes").set_value(["predict"])
    button(app, "Create client").click().run()
    assert not app.exception and not app.error, texts(app.error)
    first = app.code[0].value
    assert "Copy it now: it is not shown again." in texts(app.warning)
    clients = app.dataframe[-1].value
    client_id = clients.loc[clients["name"] == "ui-billing", "client_id"].item()
    assert clients.set_index("client_id").loc[client_id, "disabled"] == ""
    assert first not in clients.to_csv()

    app.selectbox(key="access-client").set_value(client_id)
    button(app, "Rotate secret").click().run()
    assert not app.error, texts(app.error)
    second = app.code[0].value
    assert second != first
    assert "Copy it now: it is not shown again." in texts(app.warning)
    assert texts(app.info) == ["The previous secret keeps working for 24 hours, time to deploy this one."]

    def token(secret: str) -> int:
        form = {"grant_type": "client_credentials"}
        return httpx.post(f"{ui_env}/token", data=form, auth=(client_id, secret), timeout=10).status_code

    assert token(first) == 200 and token(second) == 200  # the old one, in its grace period

    app.run()
    assert not app.code
    app.selectbox(key="access-client").set_value(client_id)
    button(app, "Disable").click().run()
    assert not app.error, texts(app.error)
    assert app.dataframe[-1].value.set_index("client_id").loc[client_id, "disabled"] == "yes"
    assert token(second) == 401

    app.selectbox(key="access-client").set_value(client_id)
    assert button(app, "Delete").disabled
    app.checkbox(key=f"access-confirm-delete-{client_id}").check().run()
    button(app, "Delete").click().run()
    assert not app.error, texts(app.error)
    assert texts(app.success) == [f"Client {client_id} deleted, with its tokens and API keys."]
    assert not any(o.startswith(f"{client_id}:") for o in options(app, "access-client"))


def options(app: AppTest, key: str) -> list[str]:
    """A select box's options as shown, or none when the page left it out (nothing to choose)."""
    return [str(option) for box in app.selectbox if box.key == key for option in box.options]

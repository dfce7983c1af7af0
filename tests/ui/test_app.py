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
    sections = ["Live quality", "Drift", "Shadow challenger", "Recent predictions"]
    assert [s.value for s in app.subheader] == sections
    unlabelled = "No labelled predictions in the last 24 h: send ground truth with POST /feedback."
    assert unlabelled in texts(app.info)
    assert "No shadow challenger answered in the last 24 h." in texts(app.info)

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

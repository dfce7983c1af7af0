"""The predictor's web UI: log in, predict with a form built from the model's schema, batch a CSV,
and (for admins) retrain, roll back, monitor, and manage API keys and service clients. It only talks
to the API over HTTP.

    make ui          (streamlit run app/ui/streamlit_app.py; API_URL says where the API is)
"""

from __future__ import annotations

import io
from typing import Any

import pandas as pd
import streamlit as st

from app.ui.access import access_page
from app.ui.client import ApiClient, ApiError, SessionExpired
from app.ui.monitoring import monitoring_page
from app.ui.session import logout, show_error
from app.ui.settings import get_ui_settings

PAGES = ("Predict", "Batch", "Model")
ADMIN_PAGES = ("Monitoring", "Access")  # GET /monitoring, /clients and everyone's keys need admin


def client() -> ApiClient:
    settings = get_ui_settings()
    return ApiClient(settings.api_url, st.session_state.get("token"), settings.api_timeout)


def login_page() -> None:
    st.title("MLOps API Predictor")
    flash = st.session_state.pop("flash", None)
    if flash:
        st.warning(flash)
    with st.form("login"):
        username = st.text_input("Username")
        password = st.text_input("Password", type="password")
        submitted = st.form_submit_button("Log in")
    if submitted:
        if not username or not password:
            st.error("Enter your username and password.")
            return
        try:
            login = client().login(username, password)
        except ApiError as exc:
            st.error(f"Login failed: {exc}")
            return
        st.session_state.update(token=login.token, username=username, scopes=login.scopes)
        st.rerun()


def number_input(feature: dict[str, Any]) -> float:
    low, high = feature.get("min"), feature.get("max")
    middle = round((low + high) / 2, 2) if low is not None and high is not None else 0.0
    span = (high - low) if low is not None and high is not None else 1.0
    return st.number_input(
        feature["name"],
        min_value=float(low) if low is not None else None,
        max_value=float(high) if high is not None else None,
        value=float(middle),
        step=max(round(span / 100, 3), 0.001),
        format="%.3f",
        help=f"training range {low} to {high}" if low is not None else None,
        key=f"feature-{feature['name']}",
    )


def predict_page(api: ApiClient) -> None:
    st.header("Predict")
    try:
        info = api.model_info()
    except ApiError as exc:
        show_error(exc)
        return
    st.caption(f"Model {info['name']}, version {info['version']}")
    with st.form("predict"):
        row: dict[str, Any] = {}
        for feature in info["features"]:
            if feature["type"] == "numeric":
                row[feature["name"]] = number_input(feature)
            else:
                row[feature["name"]] = st.selectbox(
                    feature["name"], feature.get("categories") or [], key=f"feature-{feature['name']}"
                )
        submitted = st.form_submit_button("Predict")
    if not submitted:
        return
    try:
        answer = api.predict(row, compare=True)
    except ApiError as exc:
        show_error(exc)
        return
    prediction = answer["predictions"][0]
    if "label" in prediction:
        st.success(f"Predicted: {prediction['label']}")
        probabilities = prediction.get("probabilities")
        if probabilities:
            st.bar_chart(pd.DataFrame({"probability": probabilities}), horizontal=True)
    else:
        st.success(f"Predicted value: {prediction['value']:.4f}")
    candidates = answer.get("candidates") or []
    if candidates:
        st.subheader("All candidates of the last training run")
        st.dataframe(comparison_table(candidates), hide_index=True)


def comparison_table(candidates: list[dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for candidate in candidates:
        prediction = candidate["predictions"][0]
        probabilities = prediction.get("probabilities") or {}
        rows.append(
            {
                "candidate": candidate["name"] + (" (champion)" if candidate["champion"] else ""),
                f"test {candidate['metric']}": candidate.get("score"),
                "prediction": prediction.get("label", prediction.get("value")),
                "probability": probabilities.get(prediction.get("label", ""), None),
            }
        )
    return pd.DataFrame(rows)


def row_errors(detail: Any) -> pd.DataFrame | None:
    if not isinstance(detail, list) or not all(isinstance(e, dict) for e in detail):
        return None
    return pd.DataFrame(
        [
            {"line": e.get("line"), "row": e.get("row"), "field": e.get("field"), "error": e.get("msg")}
            for e in detail
        ]
    )


def batch_page(api: ApiClient) -> None:
    st.header("Batch")
    st.write("A CSV whose header names the feature columns; one prediction per row.")
    upload = st.file_uploader("CSV file", type=["csv"])
    pasted = st.text_area("...or paste the CSV here", height=120)
    if not st.button("Predict the batch"):
        return
    if upload is not None:
        data, name = upload.getvalue(), upload.name
    elif pasted.strip():
        data, name = pasted.encode(), "pasted.csv"
    else:
        st.error("Choose a CSV file or paste one first.")
        return
    try:
        text = api.predict_csv(data, name)
    except ApiError as exc:
        if isinstance(exc, SessionExpired):
            show_error(exc)
        st.error(f"The CSV was refused: {exc}")
        errors = row_errors(exc.detail)
        if errors is not None:
            st.dataframe(errors, hide_index=True)
        return
    table = pd.read_csv(io.StringIO(text))
    st.success(f"{len(table)} rows predicted")
    st.dataframe(table, hide_index=True)
    st.download_button("Download the predictions (CSV)", text, file_name="predictions.csv", mime="text/csv")


def model_page(api: ApiClient, admin: bool) -> None:
    st.header("Model")
    try:
        info = api.model_info()
        versions = api.versions()
    except ApiError as exc:
        show_error(exc)
        return
    st.metric("Serving version", info["version"])
    st.write(f"Champion: **{info['name']}** ({info['task']}), trained {info['trained_at']}")
    source, parity = info.get("source"), info.get("parity")
    if source and parity:
        st.write(
            f"Imported from **{source['uri']}** ({source['flavor']}): its ONNX graph answers within "
            f"{parity['max_difference']:.2g} of it on {parity['rows']} rows"
        )
    if info.get("drift", "on") != "on":
        st.caption(f"Drift monitoring {info['drift']}")
    st.dataframe(pd.DataFrame({"metric": list(info["metrics"]), "test": list(info["metrics"].values())}))
    st.subheader("Versions")
    table = pd.DataFrame(
        [
            {
                "version": v["version"],
                "serving": "yes" if v["serving"] else "",
                "status": v["status"],
                "model": v["name"],
                v["metric"]: v["metrics"].get(v["metric"]),
                "origin": v.get("origin"),
                # Where an imported version came from, and how close its ONNX graph answers to it.
                "source": f"{v['source']['flavor']}: {v['source']['uri']}" if v.get("source") else "",
                "parity": _difference(v.get("parity_max_difference")),
                "mlflow version": v.get("registered_version"),
                "mlflow alias": (v.get("mlflow_alias") or {}).get("status", ""),
            }
            for v in versions["versions"]
        ]
    )
    st.dataframe(table, hide_index=True)
    if admin:
        retrain_section(api)
        rollback_section(api, [v["version"] for v in versions["versions"]], versions["serving"])


def _difference(value: float | None) -> str:
    return "" if value is None else f"{value:.2g}"


def retrain_section(api: ApiClient) -> None:
    st.subheader("Retrain")
    upload = st.file_uploader(
        "Training CSV (feature columns and the target); none: the project's data",
        type=["csv"],
        key="train-csv",
    )
    if st.button("Start retraining"):
        try:
            job = api.train(upload.getvalue() if upload else None, upload.name if upload else "train.csv")
        except ApiError as exc:
            show_error(exc)
        else:
            st.session_state["job_id"] = job["id"]
    job_id = st.session_state.get("job_id")
    if job_id:
        job_status(api, job_id)


@st.fragment(run_every=2)
def job_status(api: ApiClient, job_id: str) -> None:
    try:
        job = api.job(job_id)
    except ApiError as exc:
        show_error(exc)
        return
    status = job["status"]
    if status == "succeeded":
        (st.success if job.get("promoted") else st.warning)(
            f"Job {job_id[:8]} succeeded: {job.get('message')}"
        )
        if job.get("metrics"):
            st.json(job["metrics"], expanded=False)
    elif status == "failed":
        st.error(f"Job {job_id[:8]} failed: {job.get('reason')}")
    else:
        st.info(f"Job {job_id[:8]} is {status} (training on {job['data']})...")


def rollback_section(api: ApiClient, versions: list[str], serving: str | None) -> None:
    st.subheader("Roll back")
    choices = [v for v in versions if v != serving]
    if not choices:
        st.write("No other version to roll back to.")
        return
    version = st.selectbox("Version to serve", choices, key="rollback-version")
    if st.button("Roll back"):
        try:
            answer = api.rollback(version)
        except ApiError as exc:
            show_error(exc)
            return
        mlflow = answer.get("mlflow", {})
        st.success(f"Now serving {answer['model_version']} (was {answer['previous_version']}).")
        if mlflow.get("status") == "pending":
            st.info(
                "MLflow's champion alias follows in the background: the versions table shows how it went."
            )
        elif mlflow.get("status") != "updated":
            st.info(f"MLflow alias: {mlflow.get('status')}: {mlflow.get('reason', '')}")


def main() -> None:
    st.set_page_config(page_title="Predictor", layout="centered")
    if not st.session_state.get("token"):
        login_page()
        return
    admin = "admin" in st.session_state.get("scopes", [])
    with st.sidebar:
        st.write(f"Logged in as **{st.session_state['username']}**" + (" (admin)" if admin else ""))
        page = st.radio("Page", PAGES + ADMIN_PAGES if admin else PAGES, key="page")
        if st.button("Log out"):
            logout("You are logged out.")
            st.rerun()
    api = client()
    try:
        if page == "Predict":
            predict_page(api)
        elif page == "Batch":
            batch_page(api)
        elif page == "Monitoring":
            monitoring_page(api)
        elif page == "Access":
            access_page(api, st.session_state.get("scopes", []))
        else:
            model_page(api, admin)
    except ApiError as exc:  # anything a page did not handle itself
        show_error(exc)


main()

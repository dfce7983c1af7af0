"""The Monitoring page (admins): live quality and its estimate over time, drift per feature, the shadow
challenger's agreement, and the newest predictions with their feedback, all from GET /monitoring; and the
canary (GET /model/canary), with its guards and the buttons to promote or end it.

An ApiError is left to the page's caller, which shows it as every page's errors are shown.
"""

from __future__ import annotations

import json
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from app.ui.client import ApiClient, ApiError, SessionExpired
from app.ui.session import show_error

WINDOWS = (1, 6, 24, 72, 168, 720)  # hours
RECENT_ROWS = (50, 100, 500)
# PSI reads: below 0.1 stable, 0.1 to 0.2 a shift worth a look, above 0.2 drift (docs/operations.md).
PSI_SHIFT, PSI_DRIFT = 0.1, 0.2
# What a canary decision did, in words (GET /model/canary's last_decision.action).
DECISIONS = {
    "started": "started",
    "advanced": "advanced",
    "held": "held",
    "promoted": "promoted",
    "rolled_back": "rolled back",
    "ended": "ended",
}
# The outcome of the last canary button, shown once on the next run (the page reruns to show the canary
# as it is after the action).
CANARY_OUTCOME = "canary-outcome"


def monitoring_page(api: ApiClient) -> None:
    st.header("Monitoring")
    left, right = st.columns(2)
    hours = left.selectbox("Window", WINDOWS, index=WINDOWS.index(24), format_func=_window, key="mon-hours")
    limit = right.selectbox("Recent predictions", RECENT_ROWS, key="mon-limit")
    report = api.monitoring(hours, limit)
    if report["prediction_log_sample"] == 0:
        st.warning("The prediction log is off (PREDICTION_LOG_SAMPLE=0): nothing is logged to monitor.")
    quality_section(report)
    drift_section(report)
    shadow_section(report)
    canary_section(api)
    recent_section(report)


def _window(hours: int) -> str:
    return f"last {hours} h"


def _regression(report: dict[str, Any]) -> bool:
    if report["task"] is not None:
        return report["task"] == "regression"
    return any(hour["mae"] is not None for hour in report["quality"]["hourly"])


def quality_section(report: dict[str, Any]) -> None:
    st.subheader("Live quality")
    quality, window = report["quality"], _window(report["hours"])
    if not quality["hourly"]:
        st.info(f"No predictions logged in the {window}.")
        return
    if not any(v["labelled"] for v in quality["versions"]):
        st.info(f"No labelled predictions in the {window}: send ground truth with POST /feedback.")
    st.dataframe(versions_table(report), hide_index=True)
    st.caption(
        "MAE and RMSE per hour, on the labelled predictions; the dashed line is LIVE_MAE_MAX."
        if _regression(report)
        else "Accuracy per hour on the labelled predictions, beside the expected accuracy (the mean top "
        "probability of all predictions: an estimate that needs no labels); the dashed line is "
        f"LIVE_ACCURACY_MIN. The LiveQualityLow alert waits for {quality['thresholds']['min_labels']} labels."
    )
    st.altair_chart(quality_chart(report))


def versions_table(report: dict[str, Any]) -> pd.DataFrame:
    figures = ("mae", "rmse") if _regression(report) else ("accuracy", "macro_f1", "expected_accuracy")
    return pd.DataFrame(
        [
            {
                "version": v["model_version"],
                "predictions": v["predictions"],
                "labelled": v["labelled"],
                **{figure: v[figure] for figure in figures},
            }
            for v in report["quality"]["versions"]
        ]
    )


def quality_frame(report: dict[str, Any]) -> pd.DataFrame:
    """One row per hour, figure and version (long form, as Altair draws it)."""
    figures = (
        {"mae": "MAE", "rmse": "RMSE"}
        if _regression(report)
        else {"accuracy": "accuracy", "expected_accuracy": "expected accuracy"}
    )
    rows = [
        {
            "hour": pd.Timestamp(hour["hour"]),
            "series": f"{name} {hour['model_version']}",
            "value": hour[key],
            "labelled": hour["labelled"],
            "predictions": hour["predictions"],
        }
        for hour in report["quality"]["hourly"]
        for key, name in figures.items()
        if hour[key] is not None
    ]
    return pd.DataFrame(rows, columns=["hour", "series", "value", "labelled", "predictions"])


def quality_chart(report: dict[str, Any]) -> alt.Chart | alt.LayerChart:
    """Points joined by lines (one hour alone is still seen), and the alert's threshold dashed."""
    regression = _regression(report)
    thresholds = report["quality"]["thresholds"]
    threshold = thresholds["mae_max"] if regression else thresholds["accuracy_min"]
    scale = alt.Scale() if regression else alt.Scale(domain=[0, 1])
    lines = (
        alt.Chart(quality_frame(report))
        .mark_line(point=True)
        .encode(
            x=alt.X("hour:T", title=None),
            y=alt.Y("value:Q", title="MAE / RMSE" if regression else "accuracy", scale=scale),
            color=alt.Color("series:N", title=None, legend=alt.Legend(orient="bottom", labelLimit=400)),
            tooltip=[
                "hour:T",
                "series:N",
                alt.Tooltip("value:Q", format=".4f"),
                "labelled:Q",
                "predictions:Q",
            ],
        )
    )
    if threshold is None:
        return lines
    rule = alt.Chart(pd.DataFrame({"threshold": [threshold]})).mark_rule(strokeDash=[6, 4], color="red")
    return lines + rule.encode(y="threshold:Q", tooltip=["threshold:Q"])


def drift_section(report: dict[str, Any]) -> None:
    st.subheader("Drift")
    drift = report["drift"]
    if drift["unavailable"]:
        st.info(f"No drift to show: {drift['unavailable']}.")
        return
    if not drift["rows"]:
        st.info(f"No inputs logged in the {_window(report['hours'])}.")
        return
    st.caption(
        f"{drift['rows']} inputs logged in the window (the newest, at most {drift['max_rows']}) against "
        f"version {drift['model_version']}'s training data, in the training histogram's bins. "
        f"PSI below {PSI_SHIFT} stable, {PSI_SHIFT} to {PSI_DRIFT} a shift, above {PSI_DRIFT} drift."
    )
    table = drift_table(drift)
    st.dataframe(table, hide_index=True)
    features = {f["feature"]: f for f in drift["features"]}
    name = st.selectbox("Feature", list(table["feature"]), key="mon-feature")  # the most drifted first
    st.bar_chart(histogram_frame(features[name]), stack=False, sort=False)


def drift_table(drift: dict[str, Any]) -> pd.DataFrame:
    rows = [
        {"feature": f["feature"], "inputs": f["rows"], "PSI": f["psi"], "reading": _reading(f["psi"])}
        for f in drift["features"]
    ]
    frame = pd.DataFrame(rows, columns=["feature", "inputs", "PSI", "reading"])
    return frame.sort_values("PSI", ascending=False, na_position="last", kind="stable")


def _reading(psi: float | None) -> str:
    if psi is None:
        return "no inputs"
    return "drift" if psi > PSI_DRIFT else "shift" if psi > PSI_SHIFT else "stable"


def histogram_frame(feature: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame({"training": feature["training"], "recent": feature["recent"]}, index=feature["bins"])


def shadow_section(report: dict[str, Any]) -> None:
    st.subheader("Shadow challenger")
    shadow, window = report["shadow"], _window(report["hours"])
    named = shadow["current"]
    answered = next((v for v in shadow["versions"] if v["version"] == named), None)
    if named is None and not shadow["versions"]:
        st.info(f"No shadow challenger answered in the {window}.")
        return
    if named is None:
        st.info("No shadow challenger runs now; these answered earlier in the window.")
    elif answered is None:
        st.info(f"Shadow {named} runs, but has answered no logged prediction in the {window} yet.")
    if answered is not None:
        left, middle, right = st.columns(3)
        left.metric("Shadow version", answered["version"])
        middle.metric("Agrees with the champion", f"{answered['agreement']:.1%}")
        right.metric("Predictions compared", answered["compared"])
    if shadow["versions"]:
        st.caption(
            "Agreement: the champion's label, or for a regression a value within 1% of the champion's."
        )
        st.dataframe(shadow_table(shadow), hide_index=True)


def shadow_table(shadow: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "version": v["version"],
                "compared": v["compared"],
                "agreed": v["agreed"],
                "agreement": v["agreement"],
                "mean |difference|": v["mean_absolute_difference"],
                "labelled": v["quality"]["labelled"],
                "its accuracy": v["quality"]["accuracy"],
                "its MAE": v["quality"]["mae"],
                "last seen": pd.Timestamp(v["last_seen"]),
            }
            for v in shadow["versions"]
        ]
    ).dropna(axis="columns", how="all")


def canary_section(api: ApiClient) -> None:
    st.subheader("Canary")
    for kind, text in st.session_state.pop(CANARY_OUTCOME, []):
        getattr(st, kind)(text)
    status = api.canary()
    canary, decision = status["canary"], status["last_decision"]
    if canary is None:
        last = f" Last: {describe_decision(decision)}" if decision is not None else ""
        st.info(f"No canary runs: the champion answers every request.{last}")
        return
    steps = canary["steps"]
    columns = st.columns(4)
    columns[0].metric("Canary version", canary["version"])
    columns[1].metric("Share", f"{canary['percent']}%")
    columns[2].metric("Step", f"{canary['step'] + 1} of {len(steps)}" if steps else "—")
    columns[3].metric("Champion version", status["model_version"] or "—")
    st.caption(canary_plan(canary))
    if status["guards"]:
        st.dataframe(guards_table(status["guards"]), hide_index=True)
    else:
        st.caption("The guards have not judged it yet on this replica.")
    if status["waiting_for"]:
        st.caption(f"Waiting for: {status['waiting_for']}")
    if decision is not None and decision["version"] == canary["version"]:
        st.caption(f"Last decision: {describe_decision(decision)}")
    left, right = st.columns(2)
    if left.button("Promote canary", key="canary-promote"):
        canary_action(lambda: promoted(api.promote_canary()))
    if right.button("End canary", key="canary-end"):
        canary_action(lambda: ended(api.end_canary(), status["model_version"]))


def describe_decision(decision: dict[str, Any]) -> str:
    action = DECISIONS.get(decision["action"], decision["action"])
    return f"canary {decision['version']} {action}: {decision['reason']} ({decision['at']})"


def canary_plan(canary: dict[str, Any]) -> str:
    plan = f"Started by {canary['started_by']} at {canary['started_at']}, sticky by {canary['sticky_by']}"
    if canary["steps"]:
        shares = " → ".join(f"{share}%" for share in canary["steps"])
        plan += (
            f"; steps {shares}, each at least {canary['step_seconds']:g} s and "
            f"{canary['step_labels']} labelled predictions"
        )
    if canary["auto_promote"]:
        plan += "; promoted by itself past the last step when the promotion gate passes"
    return plan + "."


def guards_table(guards: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "guard": g["guard"],
                "breached": "yes" if g["breached"] else "no",
                "value": g["value"],
                "limit": g["limit"],
                "detail": g["detail"],
                "breached since": pd.Timestamp(g["breached_since"]) if g["breached_since"] else None,
            }
            for g in guards
        ]
    )


def canary_action(act: Any) -> None:
    """Call the API, keep what came of it for the next run, and rerun: the section then shows the canary
    as the action left it, under the outcome. A refusal (409) is a warning, any other failure an error."""
    try:
        outcome = act()
    except SessionExpired as exc:
        show_error(exc)
        return
    except ApiError as exc:
        text = str(exc)
        outcome = [("warning" if exc.status == 409 else "error", text[:1].upper() + text[1:])]
    st.session_state[CANARY_OUTCOME] = outcome
    st.rerun()


def promoted(answer: dict[str, Any]) -> list[tuple[str, str]]:
    evidence, mlflow = answer["evidence"], answer.get("mlflow", {})
    outcome = [
        (
            "success",
            f"Canary promoted: now serving {answer['model_version']} (was {answer['previous_version']}); "
            f"live {evidence['metric']} {_figure(evidence['canary'])} against the champion's "
            f"{_figure(evidence['champion'])}, on {evidence['labelled']} labelled predictions.",
        )
    ]
    if mlflow.get("status") == "pending":
        outcome.append(("info", "MLflow's champion alias follows in the background."))
    elif mlflow.get("status") != "updated":
        outcome.append(("info", f"MLflow alias: {mlflow.get('status')}: {mlflow.get('reason', '')}"))
    return outcome


def _figure(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def ended(answer: dict[str, Any], champion: str | None) -> list[tuple[str, str]]:
    if answer["ended"] is None:
        return [("info", "No canary ran: nothing to end.")]
    return [("success", f"Canary {answer['ended']} ended: the champion {champion} answers everyone again.")]


def recent_section(report: dict[str, Any]) -> None:
    st.subheader("Recent predictions")
    if not report["recent"]:
        st.info("No predictions logged yet.")
        return
    st.dataframe(recent_table(report["recent"]), hide_index=True)


def recent_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    def truth(row: dict[str, Any]) -> Any:
        return row["true_label"] if row["true_label"] is not None else row["true_value"]

    return pd.DataFrame(
        [
            {
                "time": pd.Timestamp(row["time"]),
                "prediction id": row["prediction_id"],
                "version": row["model_version"],
                "user": row["username"],
                "prediction": _prediction(row["answer"]),
                "truth": truth(row),
                "labelled at": pd.Timestamp(row["labelled_at"]) if row["labelled_at"] else None,
                "input": json.dumps(row["input"]),  # last: the widest
            }
            for row in rows
        ]
    )


def _prediction(answer: Any) -> Any:
    if isinstance(answer, dict):
        return answer.get("label", answer.get("value"))
    return answer

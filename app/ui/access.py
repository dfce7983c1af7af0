"""The Access page (admins): API keys and service clients, from /api-keys and /clients.

A new key or client secret is shown once, on the run right after it was made: the API keeps only its
hash, and the session forgets it as soon as it has been shown. An ApiError while listing is left to
the page's caller, which shows it as every page's errors are shown; one from an action is shown under
its button, and the lists stay.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pandas as pd
import streamlit as st

from app.ui.client import ApiClient, ApiError
from app.ui.session import show_error

# What POST /clients/{id}/rotate documents (ROTATION_GRACE_SECONDS); the UI imports nothing of the API.
ROTATION_GRACE = "24 hours"
NOTICE = "issued"  # the session key of the one-run notice (app.ui.session clears it on logout)
MAX_DAYS = 3650  # the API's limit on expires_in_days


def access_page(api: ApiClient, scopes: list[str]) -> None:
    st.header("Access")
    notice = st.session_state.pop(NOTICE, None)
    if notice:
        show_notice(notice)
    keys_section(api, scopes)
    clients_section(api, scopes)


def show_notice(notice: dict[str, Any]) -> None:
    st.success(notice["message"])
    if notice.get("secret"):
        st.code(notice["secret"], language=None)
        st.warning("Copy it now: it is not shown again.")
    if notice.get("note"):
        st.info(notice["note"])


def done(message: str, secret: str | None = None, note: str | None = None) -> None:
    """Rerun so the lists include the change; the notice (and any secret) shows on that run only."""
    st.session_state[NOTICE] = {"message": message, "secret": secret, "note": note}
    st.rerun()


def _when(moment: str | None, missing: str) -> str:
    if moment is None:
        return missing
    return datetime.fromisoformat(moment).astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _status(key: dict[str, Any]) -> str:
    if key["revoked"]:
        return "revoked"
    expires = key["expires_at"]
    if expires is not None and datetime.fromisoformat(expires) <= datetime.now(UTC):
        return "expired"
    return "active"


def keys_table(keys: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "id": k["id"],
                "name": k["name"],
                "owner": k["owner"],
                "scopes": " ".join(k["scopes"]),
                "created": _when(k["created_at"], ""),
                "expires": _when(k["expires_at"], "never"),
                "last used": _when(k["last_used_at"], "never"),
                "status": _status(k),
            }
            for k in keys
        ],
        columns=["id", "name", "owner", "scopes", "created", "expires", "last used", "status"],
    )


def keys_section(api: ApiClient, scopes: list[str]) -> None:
    st.subheader("API keys")
    keys = api.api_keys()
    if keys:
        st.dataframe(keys_table(keys), hide_index=True)
    else:
        st.info("No API keys yet.")
    create_key_form(api, scopes)
    active = {k["id"]: k for k in keys if _status(k) == "active"}
    if not active:
        return
    key_id = st.selectbox(
        "Key to revoke",
        list(active),
        format_func=lambda i: f"{i}: {active[i]['name']} ({active[i]['owner']})",
        key="access-key",
    )
    if st.button("Revoke key"):
        try:
            api.revoke_api_key(key_id)
        except ApiError as exc:
            show_error(exc)
            return
        done(f"API key {key_id} revoked.")


def create_key_form(api: ApiClient, scopes: list[str]) -> None:
    with st.form("create-key", clear_on_submit=True):
        st.write("**New API key**")
        name = st.text_input("Name", key="key-name")
        chosen = st.multiselect(
            "Scopes", scopes, default=[s for s in ("predict",) if s in scopes], key="key-scopes"
        )
        days = st.number_input(
            "Expires in days (0: never)", min_value=0, max_value=MAX_DAYS, value=90, step=1, key="key-days"
        )
        owner = st.text_input(
            "Owner (optional)", help="A username or client:<client_id>; empty: you", key="key-owner"
        )
        submitted = st.form_submit_button("Create API key")
    if not submitted:
        return
    if not name.strip() or not chosen:
        st.error("Give the key a name and at least one scope.")
        return
    try:
        created = api.create_api_key(name.strip(), chosen, days or None, owner.strip() or None)
    except ApiError as exc:
        show_error(exc)
        return
    done(
        f"API key {created['id']} ({created['name']}) created for {created['owner']}; the key:",
        created["key"],
    )


def clients_table(clients: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "client_id": c["client_id"],
                "name": c["name"],
                "scopes": " ".join(c["scopes"]),
                "disabled": "yes" if c["disabled"] else "",
                "created": _when(c["created_at"], ""),
            }
            for c in clients
        ],
        columns=["client_id", "name", "scopes", "disabled", "created"],
    )


def clients_section(api: ApiClient, scopes: list[str]) -> None:
    st.subheader("Service clients")
    clients = api.service_clients()
    if clients:
        st.dataframe(clients_table(clients), hide_index=True)
    else:
        st.info("No service clients yet.")
    create_client_form(api, scopes)
    if clients:
        client_actions(api, {c["client_id"]: c for c in clients})


def create_client_form(api: ApiClient, scopes: list[str]) -> None:
    with st.form("create-client", clear_on_submit=True):
        st.write("**New service client** (it signs in at POST /token with the client-credentials grant)")
        name = st.text_input("Name", key="client-name")
        chosen = st.multiselect(
            "Scopes", scopes, default=[s for s in ("predict",) if s in scopes], key="client-scopes"
        )
        submitted = st.form_submit_button("Create client")
    if not submitted:
        return
    if not name.strip() or not chosen:
        st.error("Give the client a name and at least one scope.")
        return
    try:
        created = api.create_client(name.strip(), chosen)
    except ApiError as exc:
        show_error(exc)
        return
    done(f"Client {created['client_id']} ({created['name']}) created; its secret:", created["client_secret"])


def client_actions(api: ApiClient, clients: dict[str, dict[str, Any]]) -> None:
    client_id = st.selectbox(
        "Client",
        list(clients),
        format_func=lambda i: (
            f"{i}: {clients[i]['name']}" + (" (disabled)" if clients[i]["disabled"] else "")
        ),
        key="access-client",
    )
    rotate, disable, delete = st.columns(3)
    # Keyed by client: ticking it for one client never arms the button for the next one chosen.
    confirmed = delete.checkbox("Confirm deleting", key=f"access-confirm-delete-{client_id}")
    try:
        if rotate.button("Rotate secret"):
            secret = api.rotate_client(client_id)["client_secret"]
            done(
                f"Client {client_id} has a new secret:",
                secret,
                f"The previous secret keeps working for {ROTATION_GRACE}, time to deploy this one.",
            )
        if disable.button("Disable", disabled=clients[client_id]["disabled"]):
            api.disable_client(client_id)
            done(f"Client {client_id} disabled: its tokens and API keys are refused on every replica.")
        if delete.button("Delete", disabled=not confirmed):
            api.delete_client(client_id)
            done(f"Client {client_id} deleted, with its tokens and API keys.")
    except ApiError as exc:
        show_error(exc)

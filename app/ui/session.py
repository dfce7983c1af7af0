"""The browser session every page shares: who is signed in, logging out, and showing an API error."""

from __future__ import annotations

import streamlit as st

from app.ui.client import ApiError, SessionExpired

# "issued": a secret the Access page shows once; it must not outlive the login that made it.
SESSION_KEYS = ("token", "username", "scopes", "job_id", "issued")


def logout(message: str | None = None) -> None:
    for key in SESSION_KEYS:
        st.session_state.pop(key, None)
    if message:
        st.session_state["flash"] = message


def show_error(exc: ApiError) -> None:
    """Readable, never a traceback; an expired session goes back to the login page."""
    if isinstance(exc, SessionExpired):
        logout("Your session has expired: please log in again.")
        st.rerun()
    st.error(f"Error: {exc}")

"""The web UI (Streamlit): a client of the API over HTTP, nothing more. `make ui` starts it."""

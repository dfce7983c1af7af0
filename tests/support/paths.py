"""Where the project's files are, for tests that read them or copy them to a scratch folder."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STREAMLIT_APP = str(ROOT / "app" / "ui" / "streamlit_app.py")

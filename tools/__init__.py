"""Development tools, run from the project folder (`python -m tools.X`); not part of the installed package."""

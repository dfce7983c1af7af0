"""The README's layering rule, checked on every import in app/ (function-level ones included)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.support.paths import ROOT

APP = ROOT / "app"
# package -> the app packages it may import besides itself (README, "What may import what").
ALLOWED = {
    "core": set(),
    "adapters": {"core"},
    "pipeline": {"core", "adapters"},
    "db": {"core", "adapters"},
    "observability": {"core"},
    "serving": {"core", "adapters", "observability"},
    "jobs": {"core", "adapters", "serving"},
    "api": {"core", "adapters", "db", "serving", "observability"},
    # `models import`, an operator's command: reads models with their libraries, compiles them with
    # the pipeline's converters, publishes through the store and the serving pointer.
    "importing": {"core", "adapters", "db", "serving", "pipeline"},
    "ui": set(),
}
WIRING = {
    "main",
    "serve",
    "cli",
    "worker",
    "publish",
    "drain",
}  # top-level modules: anything but the pipeline
# ... except `models publish`, an operator's command that scores the champion with the pipeline's gate.
PIPELINE_WIRING = {"publish"}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return {name.split(".")[1] for name in found if name.startswith("app.") and name.count(".") >= 1}


def test_each_package_imports_only_what_the_layering_allows():
    wrong = []
    for path in sorted(APP.rglob("*.py")):
        relative = path.relative_to(APP)
        owner = relative.parts[0].removesuffix(".py")
        used = _imports(path) - {owner}
        if owner in PIPELINE_WIRING:
            allowed: set[str] | None = set(ALLOWED) | WIRING
        elif owner in WIRING:
            allowed = (set(ALLOWED) | WIRING) - {"pipeline"}
        else:
            allowed = ALLOWED.get(owner)
        if allowed is None:
            continue  # app/__init__.py
        wrong += [f"{relative} imports app.{name}" for name in sorted(used - allowed)]
    assert not wrong, "\n".join(wrong)


def test_the_readme_table_is_the_rule_checked_here():
    text = (ROOT / "README.md").read_text()
    table = text.split("What may import what:", 1)[1].split("\n\n", 2)[1]
    stated: dict[str, set[str]] = {}
    for row in table.splitlines()[2:]:
        owners, allowed = (cell.strip() for cell in row.strip("|").split("|"))
        if ".py" in owners:
            continue  # the wiring modules: WIRING and PIPELINE_WIRING above
        for owner in re.findall(r"`(\w+)`", owners):
            stated[owner] = set(re.findall(r"`(\w+)`", allowed.split("(")[0]))
    assert stated == ALLOWED

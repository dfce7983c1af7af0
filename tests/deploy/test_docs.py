"""The docs stay navigable: a short README, links that land, `make help` in step with the command table."""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from tests.support.paths import ROOT

README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
COMMAND_TABLE = ROOT / "docs" / "development.md"
# Targets that other targets run for you; `make help` leaves them out on purpose.
INTERNAL_TARGETS = {"help", "install", "ui-tools"}

FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\]\(([^)\s]+)\)")
MAKE_TARGET = re.compile(r"make ([\w-]+)")


def prose(text: str) -> str:
    """The text without code blocks and code spans, where brackets and hashes are not markdown."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the file's headings: lower case, punctuation dropped, spaces as hyphens."""
    seen: Counter[str] = Counter()
    found = set()
    for line in FENCE.sub("", path.read_text()).splitlines():
        if match := re.match(r"#{1,6} (.+)", line):
            slug = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-")
            found.add(f"{slug}-{seen[slug]}" if seen[slug] else slug)
            seen[slug] += 1
    return found


def test_readme_stays_short():
    size = len(README.read_bytes())
    assert size < 16 * 1024, f"README.md is {size} bytes: move the detail into docs/"


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda page: str(page.relative_to(ROOT)))
def test_relative_links_land(page: Path):
    broken = []
    for target in LINK.findall(prose(page.read_text())):
        if re.match(r"[a-z]+:", target):  # https:, mailto:: not ours to check
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading with that anchor")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


# A path in a code span that starts with one of these folders names a file in git, never an output.
REPO_PATH = re.compile(r"(?<![\w/.])((?:app|bench|dashboards|deploy|tests|tools)/[\w./-]*[\w/])")


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda page: str(page.relative_to(ROOT)))
def test_paths_the_docs_name_exist(page: Path):
    spans = CODE_SPAN.findall(FENCE.sub("", page.read_text()))
    missing = {path for span in spans for path in REPO_PATH.findall(span) if not (ROOT / path).exists()}
    assert not missing, f"{page.relative_to(ROOT)} names files that are not there: {sorted(missing)}"


def code_map() -> list[str]:
    """The paths README's code map names: each head (a folder or file), and the .py files its text names."""
    block = FENCE.search(README.read_text().split("## Code map", 1)[1])
    assert block, "README.md has no code map"
    paths, folder = [], ""
    for line in block.group().splitlines()[1:-1]:
        indent = len(line) - len(line.lstrip())
        text = line
        if indent <= 2:  # a head: top level at 0, inside app/ at 2; deeper lines continue the one above
            head, _, text = line.strip().partition(" ")
            path = head if indent == 0 else f"app/{head}"
            paths.append(path)
            folder = path if path.endswith("/") else path.rpartition("/")[0] + "/"
        paths += [folder + name for name in re.findall(r"\b\w+\.py\b", text)]
    return paths


def test_the_code_map_names_files_that_exist():
    paths = code_map()
    assert "app/core/" in paths and "app/main.py" in paths
    missing = [path for path in paths if not (ROOT / path).exists()]
    assert not missing, f"README.md's code map names files that are not there: {missing}"


def help_targets() -> list[str]:
    out = subprocess.run(
        ["make", "--no-print-directory", "-s", "help"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    # A line names its targets up front ("make push / make pull   ..."); indented lines continue one.
    heads = [re.match(r"make [\w-]+(?: / make [\w-]+)*", line) for line in out.splitlines()]
    return [target for head in heads if head for target in MAKE_TARGET.findall(head.group())]


def table_targets() -> list[str]:
    rows = [line for line in COMMAND_TABLE.read_text().splitlines() if line.startswith("| `make ")]
    return [target for row in rows for target in MAKE_TARGET.findall(row.split("|")[1])]


def test_make_help_and_the_command_table_list_the_same_targets():
    in_help, in_table = help_targets(), table_targets()
    assert in_help and in_table
    assert in_help == in_table, (
        f"`make help` and {COMMAND_TABLE.relative_to(ROOT)} differ: "
        f"only in help {sorted(set(in_help) - set(in_table))}, "
        f"only in the table {sorted(set(in_table) - set(in_help))} (or in another order)"
    )


def test_make_help_lists_every_target_the_makefile_defines():
    defined = set(re.findall(r"^([a-z][\w-]*):(?!=)", (ROOT / "Makefile").read_text(), re.MULTILINE))
    assert set(help_targets()) == defined - INTERNAL_TARGETS

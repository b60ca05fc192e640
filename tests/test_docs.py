"""The README and the documentation site (docs/, built by `make docs` with --strict) stay readable and in the repo.

mkdocs --strict checks the links between pages; these check what it does not
see: the README's length and links, and the repository paths the pages name in
code spans (`scorer_service/model.py`), which must exist. A path under a
git-ignored folder is an output (`demo-out/result.json`) and is not checked; any
other file named outside the repository's own folders points outside it.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.procs import REPO

README = REPO / "README.md"
PAGES = sorted((REPO / "docs").glob("*.md"))
LINK = re.compile(r"(?<!!)\[[^\]]+\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"`([^`\s]+)`")
FILE_SUFFIX = re.compile(r"\.(md|py|txt|json|toml|ya?ml|proto|csv)$")


def tracked_top_level() -> set[str]:
    listed = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return {line.split("/")[0] for line in listed.splitlines()}


def ignored(path: str) -> bool:
    """Whether git ignores the path, as a file or as a folder (a pattern like `out/` matches folders only)."""
    return any(
        subprocess.run(["git", "check-ignore", "-q", "--no-index", name], cwd=REPO).returncode == 0
        for name in (path, path.rstrip("/") + "/")
    )


def outside_fences(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)


def github_slug(heading: str) -> str:
    return re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", heading.strip().lower()))


def test_the_readme_is_short():
    assert len(README.read_text().splitlines()) <= 250


def test_the_readmes_links_resolve_inside_the_repository():
    text = outside_fences(README.read_text())
    anchors = {github_slug(h) for h in re.findall(r"^#+ (.*)$", text, re.M)}
    for target in LINK.findall(text):
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        if not path:
            assert anchor in anchors, f"README links #{anchor}, which no heading makes"
            continue
        resolved = (REPO / path).resolve()
        assert resolved.is_relative_to(REPO) and resolved.exists(), f"README links {target}: not in the repository"


@pytest.mark.parametrize("page", [README, *PAGES], ids=lambda p: p.relative_to(REPO).as_posix())
def test_the_paths_a_page_names_are_in_the_repository(page):
    top_level = tracked_top_level()
    for span in CODE_SPAN.findall(outside_fences(page.read_text())):
        path = span.split("#")[0].split(":")[0].rstrip(".,")
        if "/" not in path or path.startswith(("http", "/", "~", "$", "-", ".")) or re.search(r"[<>{}*\[\]=]", path):
            continue  # not a repository path: a URL, a user's path, a variable, a pattern
        if ignored(path):
            continue  # an output (demo-out/, out/, .cache/...), made by running something
        if path.split("/")[0] in top_level:
            assert (REPO / path).exists(), f"{page.name} names {span}, which the repository does not hold"
        else:
            assert not FILE_SUFFIX.search(path), f"{page.name} names {span}, a file outside the repository"

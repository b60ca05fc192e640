"""The optimizer image installs only deploy/docker/optimizer-requirements.txt and copies
promptclimb_common/ and optimizer_service/: everything those import at module level
must come from that list (no torch, no scorer_service)."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys

from tests.deploy import REPO

COPIED = ("optimizer_service", "promptclimb_common")
LOCAL = {"optimizer_service", "promptclimb_common", "promptclimb"}  # promptclimb: the generated stubs


def module_level_imports(path) -> set[str]:
    """Top-level names imported when the module loads (imports inside functions are lazy and excluded)."""
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()

    def visit(body):
        for node in body:
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
            elif isinstance(node, (ast.If, ast.Try, ast.With)):
                for field in ("body", "orelse", "finalbody", "handlers"):
                    for child in getattr(node, field, []) or []:
                        visit(child.body if isinstance(child, ast.ExceptHandler) else [child])

    visit(tree.body)
    return names


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_optimizer_imports_only_what_its_image_installs():
    listed = set()
    for line in (REPO / "deploy" / "docker" / "optimizer-requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            listed.add(normalize(line.split("==")[0]))
    dists = importlib.metadata.packages_distributions()
    problems = []
    for package in COPIED:
        for path in sorted((REPO / package).rglob("*.py")):
            for name in sorted(module_level_imports(path)):
                if name in sys.stdlib_module_names or name in LOCAL or name == "__future__":
                    continue
                if name == "scorer_service":
                    problems.append(
                        f"{path.relative_to(REPO)} imports scorer_service, which the optimizer image does not copy"
                    )
                    continue
                owners = {normalize(d) for d in dists.get(name, [])}
                if not owners & listed:
                    found_in = sorted(owners) or "no installed distribution"
                    problems.append(
                        f"{path.relative_to(REPO)} imports {name} (from {found_in}), "
                        "not in deploy/docker/optimizer-requirements.txt"
                    )
    assert not problems, "\n".join(problems)

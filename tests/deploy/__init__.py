"""Tests of deploy/: the check script, the health checker, the optimizer image's imports, a live Prometheus scrape."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def load_check():
    """deploy/check.py as a module (tests/ is on sys.path, so `import deploy` would find this package)."""
    name = "promptclimb_deploy_check"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "deploy" / "check.py")
        assert spec is not None and spec.loader is not None, "deploy/check.py is a Python file"
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]

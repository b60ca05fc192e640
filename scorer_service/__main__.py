"""`python -m scorer_service`: serve CLIP template scoring over gRPC."""

from __future__ import annotations

import asyncio
import sys

import structlog

from promptclimb_common.auth import AuthConfigError
from promptclimb_common.logging import configure_logging
from promptclimb_common.paths import UnwritablePathError, require_writable
from scorer_service.config import parse_config
from scorer_service.datasets import DatasetError

log = structlog.get_logger("scorer_service")


def main(argv: list[str] | None = None, prog: str = "python -m scorer_service") -> int:
    """The scorer's command line; `prog` is the name its help shows (promptclimb-scorer when installed)."""
    config = parse_config(argv, prog)
    configure_logging(config.log_level)
    try:
        require_writable(config.writable_paths())
    except UnwritablePathError as err:
        return startup_failed(err)
    # Imported only now: torch and the model stack take seconds to load, and a bad path must fail at once.
    from scorer_service.app import ScorerApp
    from scorer_service.factory import ModelLoadError
    from scorer_service.quota import QuotaStoreError

    try:
        asyncio.run(ScorerApp(config).run_until_signalled())
    except (ModelLoadError, DatasetError, AuthConfigError, UnwritablePathError, QuotaStoreError, OSError) as err:
        return startup_failed(err)
    return 0


def startup_failed(err: Exception) -> int:
    log.error("startup_failed", error=str(err))
    print(f"scorer: {err}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

"""`python -m scorer_service`: serve CLIP template scoring over gRPC."""

from __future__ import annotations

import asyncio
import sys

import structlog

from promptclimb_common.auth import AuthConfigError
from promptclimb_common.logging import configure_logging
from scorer_service.config import parse_config
from scorer_service.datasets import DatasetError
from scorer_service.model import ModelLoadError
from scorer_service.server import ScorerApp


def main(argv: list[str] | None = None) -> int:
    config = parse_config(argv)
    configure_logging(config.log_level)
    log = structlog.get_logger("scorer_service")
    try:
        asyncio.run(ScorerApp(config).run_until_signalled())
    except (ModelLoadError, DatasetError, AuthConfigError, OSError) as err:
        log.error("startup_failed", error=str(err))
        print(f"scorer: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

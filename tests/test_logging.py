"""Logging outlives whatever stream was sys.stderr when it was configured (pytest's capture, a daemon's redirect)."""

from __future__ import annotations

import io
import sys

import structlog

from promptclimb_common.logging import configure_logging


def test_logs_go_to_the_current_stderr_after_the_configuring_one_closed(capsys):
    stream, saved = io.StringIO(), sys.stderr
    sys.stderr = stream
    try:
        configure_logging("INFO", json=True)
        structlog.get_logger("t").info("first")
    finally:
        sys.stderr = saved
        stream.close()
    try:
        structlog.get_logger("t").warning("after_close")  # raised "I/O operation on closed file" before
        assert "after_close" in capsys.readouterr().err
    finally:
        configure_logging("WARNING", json=True)  # as tests/conftest.py sets it

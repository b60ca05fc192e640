"""What the image check's parts share: paths, the images' tags, the failure and the command runner."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "deploy" / "docker"
LOGS = ROOT / ".cache" / "promptclimb" / "image-check"
IMAGES = {
    "scorer": "localhost/promptclimb/scorer:check",
    "optimizer": "localhost/promptclimb/optimizer:check",
    "reproduce": "localhost/promptclimb/reproduce:check",
}


class CheckFailed(Exception):
    """A step of the check did not do what it must; the message says which and why."""


def sh(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, text=True, capture_output=True, **kwargs)
    if proc.returncode != 0:
        raise CheckFailed(f"{' '.join(cmd[:4])} ... exited {proc.returncode}: {(proc.stderr or proc.stdout)[-3000:]}")
    return proc


def say(text: str) -> None:
    print(text, flush=True)

"""The images: a debootstrapped Debian base, imported by podman, and the Dockerfiles built on it by buildah."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from image_checks.common import DOCKER, IMAGES, LOGS, ROOT, CheckFailed, sh

BASE = "localhost/promptclimb-base:bookworm"
BASE_PACKAGES = "python3,python3-venv,python-is-python3,ca-certificates"


def apt_mirror() -> str:
    """The Debian mirror apt uses for bookworm (deb822 sources first, then sources.list)."""
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for stanza in path.read_text().split("\n\n"):
            fields = {
                k.strip(): v.strip()
                for k, _, v in (
                    line.partition(":") for line in stanza.splitlines() if ":" in line and not line.startswith("#")
                )
            }
            if "bookworm" in fields.get("Suites", "").split() and fields.get("URIs"):
                return fields["URIs"].split()[0]
    legacy = Path("/etc/apt/sources.list")
    for line in legacy.read_text().splitlines() if legacy.exists() else []:
        words = line.split()
        if len(words) >= 3 and words[0] == "deb" and words[2] == "bookworm":
            return words[1]
    raise CheckFailed("no bookworm mirror in /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list")


def ensure_base() -> str:
    if subprocess.run(["podman", "image", "exists", BASE]).returncode == 0:
        return f"{BASE}: reused"
    mirror = apt_mirror()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="promptclimb-base-", dir="/var/tmp") as tmp:
        rootfs = Path(tmp) / "rootfs"
        sh(["debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", "bookworm", str(rootfs), mirror])
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        sh(["podman", "import", "-", BASE], stdin=tar.stdout)
        tar.wait()
    return f"{BASE}: debootstrap from {mirror} and podman import in {time.monotonic() - started:.0f} s"


def pip_build_inputs() -> list[str]:
    """buildah flags passing pip's configured wheel directory and CA bundle into the build, where they exist."""
    listed = sh([sys.executable, "-m", "pip", "config", "list"]).stdout
    settings = {}
    for line in listed.splitlines():
        key, _, value = line.partition("=")
        settings[key.rsplit(".", 1)[-1]] = value.strip().strip("'\"")
    flags = []
    wheels, cert = settings.get("find-links", "").split(" ")[0], settings.get("cert", "")
    if wheels and Path(wheels).is_dir():
        flags += ["-v", f"{wheels}:/tmp/build-wheels:ro", "--build-arg", "PIP_FIND_LINKS=/tmp/build-wheels"]
    if cert and Path(cert).is_file():
        flags += ["-v", f"{cert}:/tmp/build-ca.crt:ro", "--build-arg", "PIP_CERT=/tmp/build-ca.crt"]
    return flags


def torch_pin() -> str:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    return next(line.strip() for line in lines if line.startswith("torch=="))


def build(name: str, pip_flags: list[str]) -> float:
    args = {
        "scorer": {"PYTORCH_IMAGE": BASE, "TORCH_REQUIREMENT": torch_pin()},
        "optimizer": {"PYTHON_IMAGE": BASE},
        "reproduce": {"SCORER_IMAGE": IMAGES["scorer"]},
    }[name]
    log_path = LOGS / f"build-{name}.log"
    started = time.monotonic()
    # Docker format keeps HEALTHCHECK and STOPSIGNAL, which OCI image configs drop.
    build_args = [x for k, v in args.items() for x in ("--build-arg", f"{k}={v}")]
    cmd = [
        "buildah",
        "bud",
        "--isolation",
        "chroot",
        "--layers",
        "--format",
        "docker",
        "-f",
        str(DOCKER / f"{name}.Dockerfile"),
        *pip_flags,
        *build_args,
        "-t",
        IMAGES[name],
        str(ROOT),
    ]
    with log_path.open("w") as log:
        code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    if code != 0:
        raise CheckFailed(
            f"building the {name} image failed (exit {code}); the end of {log_path}:\n" + log_path.read_text()[-3000:]
        )
    return time.monotonic() - started


def image_config(tag: str) -> dict[str, Any]:
    """The image's config (User, Env, Entrypoint, Cmd, Volumes, Healthcheck) and its Size."""
    docker = json.loads(sh(["buildah", "inspect", "--type", "image", tag]).stdout)["Docker"]["config"]
    return {**docker, "Size": json.loads(sh(["podman", "image", "inspect", tag]).stdout)[0]["Size"]}

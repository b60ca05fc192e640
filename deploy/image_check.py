"""`make image-check`: both images built from their Dockerfiles and run the way compose and Kubernetes run them.

Build. A Debian bookworm base is made once by debootstrap from the mirror apt uses and imported with
`podman import` (localhost/promptclimb-base:bookworm). Both Dockerfiles are built from it with
`buildah bud --isolation chroot`, the base passed as their base-image build argument and the scorer given
TORCH_REQUIREMENT=torch==<the pin>. pip's configured wheel directory and CA bundle (`pip config list`) are
mounted into the build and passed as PIP_FIND_LINKS and PIP_CERT, so the scorer gets the CPU torch wheel.
Nothing else about the build depends on this machine; the Dockerfiles' defaults (the CUDA base) stay.
The reproduce image (deploy/k8s/reproduce's Jobs) is built on the scorer image too, but not run.

Run. In a private network namespace (loopback only, so the manifests' fixed ports collide with nothing), twice:
with the containers, environment, volumes and user of the Kubernetes cpu-dev overlay (rendered by
`kubectl kustomize`, init containers included), then with those of deploy/compose.yaml (interpolated with a
test .env). Each container is `buildah run --isolation chroot` of the image with its ENTRYPOINT, CMD and
WORKDIR, as its USER (which must be the user the manifests ask for), and:
- its root filesystem is the image's overlay remounted read-only (the filesystem itself, so no bind mount can
  make a path of it writable), after the mount points and /etc/hosts were created in the container's layer as
  a container runtime and the kubelet do. /etc/hosts maps the Service (or compose service) names to loopback,
  so the addresses in the manifests are used as they are written;
- only the manifests' volumes and /tmp are mounted, read-only where they say so;
- a probe writes to /, /app, /etc, /opt, /var and every mount: it must be refused exactly off the writable mounts.
Then the scorer must become SERVING over grpc.health.v1 (and the image's HEALTHCHECK command pass) and answer
ListTasks and Score on the tiny random-weight CLIP at /models/clip; the optimizer must become SERVING and finish
a short run against the scorer, with the scripted OpenAI-compatible LLM listening where llama-server would (and,
where the manifest keeps the scorer's quotas in Redis, Debian's redis-server where that Redis would be); both
get SIGTERM and must exit 0 within their grace periods. The scorer is also started with its state dir on the
read-only root, and must exit at once naming --state-dir.

The exit status of a container's command is read from a line its shell wrapper prints: buildah 1.28 itself
exits 2 after every command when the root is read-only (it cannot remove its mount point of
/run/.containerenv).

Not shown: a GPU (CPU torch; the CUDA base is not built), Docker and compose themselves (networks, healthchecks,
depends_on, restart), a real cluster (kubelet, probes, scheduling, NetworkPolicy, PVCs, fsGroup), and the
capability and seccomp limits of a real runtime (`podman run` cannot run here).

    python deploy/image_check.py            # build (layers cached between runs) and run; exit 1 on any failure
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from promptclimb_common.cli_help import ArgumentParser

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: promptclimb, tests.optimizer
sys.path.insert(0, str(Path(__file__).resolve().parent))  # deploy/: image_checks, checks

from image_checks.build import build, ensure_base, image_config, pip_build_inputs
from image_checks.common import IMAGES, LOGS, ROOT, CheckFailed, say
from image_checks.profiles import run_all


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-only", type=Path, help=argparse.SUPPRESS)  # the second half, in the network namespace
    ns = parser.parse_args(argv)
    LOGS.mkdir(parents=True, exist_ok=True)
    if ns.run_only:
        report: list[str] = []
        try:
            run_all(ns.run_only, report)
        except CheckFailed as err:
            say("\n".join(report) + f"\nFAIL {err}")
            return 1
        (LOGS / "run-report.md").write_text("\n".join(report) + "\n")
        return 0

    missing = [t for t in ("debootstrap", "buildah", "podman", "unshare", "ip") if not shutil.which(t)]
    if missing:
        say(f"FAIL missing tools {missing} (make image-check installs them)")
        return 1
    report = ["## make image-check", ""]
    try:
        report.append(f"- base: {ensure_base()}")
        pip_flags = pip_build_inputs()
        report.append(f"- passed into the build: {' '.join(pip_flags) or 'nothing'}")
        for name in ("optimizer", "scorer", "reproduce"):
            seconds = build(name, pip_flags)
            cached = (LOGS / f"build-{name}.log").read_text().count("Using cache")
            config = image_config(IMAGES[name])
            report.append(
                f"- built {IMAGES[name]} in {seconds:.0f} s ({cached} layers from cache): "
                f"{config['Size'] / 1e6:.0f} MB, USER {config['User']}, ENTRYPOINT {config['Entrypoint']}"
            )
    except CheckFailed as err:
        say("\n".join(report) + f"\nFAIL {err}")
        return 1
    say("\n".join(report))
    (LOGS / "run-report.md").unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="promptclimb-image-check-", dir="/var/tmp") as volumes:
        started = time.monotonic()
        code = subprocess.run(["unshare", "--net", "--", sys.executable, __file__, "--run-only", volumes]).returncode
        run_report = LOGS / "run-report.md"
        if code == 0 and run_report.exists():
            seconds = time.monotonic() - started
            say(
                run_report.read_text() + f"\nimage-check: both images ran as the manifests say ({seconds:.0f} s "
                f"of running; logs in {LOGS.relative_to(ROOT)})"
            )
            return 0
    say(f"image-check: FAILED (logs in {LOGS.relative_to(ROOT)})")
    return 1


if __name__ == "__main__":
    sys.exit(main())

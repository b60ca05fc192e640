"""One container of an image, run with `buildah run` as a container runtime would: the manifest's user, env and
volumes, the root filesystem read-only; its exit status, its gRPC health, its SIGTERM."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from image_checks.build import image_config
from image_checks.common import IMAGES, CheckFailed, sh
from image_checks.manifests import ContainerSpec
from promptclimb_common.processes import wait_healthy

# Files a container runtime (and the kubelet, for /etc/hosts) puts in the root before it is made read-only.
RUNTIME_FILES = ("etc/hosts", "etc/hostname", "etc/resolv.conf", "run/.containerenv")
EXIT_MARK = "promptclimb-image-check-exit-status:"
PROBE_PATHS = ("/", "/app", "/etc", "/opt", "/var")
PROBE = """
import errno, json, os, sys, tempfile
out = {}
for path in sys.argv[1:]:
    try:
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe-"):
            out[path] = "writable"
    except OSError as err:
        out[path] = errno.errorcode.get(err.errno, str(err.errno))
print("probe:", json.dumps(out))
"""


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class Container:
    """A working container of an image, its root remounted read-only, that runs one command at a time."""

    def __init__(self, spec: ContainerSpec) -> None:
        self.spec = spec
        self.config = image_config(IMAGES[spec.image])
        image_user = self.config.get("User", "")
        if image_user != spec.user:
            raise CheckFailed(f"{spec.name}: the manifest runs it as {spec.user}, the image's USER is {image_user!r}")
        self.argv = (spec.command or self.config.get("Entrypoint") or []) + (
            spec.args if spec.args is not None else ([] if spec.command else self.config.get("Cmd") or [])
        )
        self.name = ""
        # The environment the process sees: the image's ENV, then the manifest's.
        self.env = dict(item.split("=", 1) for item in self.config.get("Env") or []) | spec.env

    def __enter__(self) -> Container:
        name = f"promptclimb-check-{self.spec.name}-{secrets.token_hex(3)}"
        self.name = sh(["buildah", "from", "--pull-never", "--name", name, IMAGES[self.spec.image]]).stdout.strip()
        # Kubernetes ignores an image's VOLUMEs, and compose mounts ours by name: only the manifest's volumes exist.
        for volume in self.config.get("Volumes") or {}:
            sh(["buildah", "config", "--volume", f"{volume}-", self.name])
        root = Path(sh(["buildah", "mount", self.name]).stdout.strip())
        for relative in RUNTIME_FILES:
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            (root / relative).touch()
        (root / "etc/hosts").write_text("127.0.0.1 localhost " + " ".join(self.spec.hosts) + "\n")
        for mount in self.spec.mounts:
            target = root / mount.target.lstrip("/")
            if mount.source.is_dir():
                target.mkdir(parents=True, exist_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.touch()
        sh(["mount", "-o", "remount,ro", str(root)])
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["buildah", "rm", self.name], capture_output=True)

    def start(self, argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
        cmd = [
            "buildah",
            "run",
            "--isolation",
            "chroot",
            "--no-hosts",
            "--user",
            self.spec.user,
            *(x for k, v in self.spec.env.items() for x in ("-e", f"{k}={v}")),
            *(x for m in self.spec.mounts for x in ("-v", f"{m.source}:{m.target}" + (":ro" if m.read_only else ""))),
            self.name,
            "--",
            "/bin/sh",
            "-c",
            f'"$@"; echo "{EXIT_MARK} $?"',
            "sh",
            *argv,
        ]
        with log_path.open("w") as log:
            return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def run(self, argv: list[str], log_path: Path, timeout: float = 300) -> tuple[int, str]:
        process = self.start(argv, log_path)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            raise CheckFailed(
                f"{self.spec.name}: {' '.join(argv)} still running after {timeout} s; see {log_path}"
            ) from None
        return exit_status(log_path), log_path.read_text()

    def probe(self, log_path: Path) -> dict[str, str]:
        paths = list(PROBE_PATHS) + list(self.config.get("Volumes") or {})
        paths += [m.target for m in self.spec.mounts if m.source.is_dir() and m.target not in paths]
        code, output = self.run(["python", "-c", PROBE, *paths], log_path, timeout=120)
        line = next((x for x in output.splitlines() if x.startswith("probe: ")), None)
        if code != 0 or line is None:
            raise CheckFailed(f"{self.spec.name}: the write probe failed (exit {code}); see {log_path}")
        found: dict[str, str] = json.loads(line.removeprefix("probe: "))
        writable = {m.target for m in self.spec.mounts if not m.read_only and m.source.is_dir()}
        wrong = {p: r for p, r in found.items() if (r == "writable") != (p in writable)}
        if wrong:
            raise CheckFailed(f"{self.spec.name}: writable exactly on {sorted(writable)} expected, got {wrong}")
        if any(found[p] != "EROFS" for p in PROBE_PATHS):
            raise CheckFailed(f"{self.spec.name}: the root is not read-only: {found}")
        return found


def exit_status(log_path: Path) -> int:
    marks = [line for line in log_path.read_text().splitlines() if line.startswith(EXIT_MARK)]
    if not marks:
        raise CheckFailed(f"no exit status in {log_path}: the command did not end on its own")
    return int(marks[-1].removeprefix(EXIT_MARK))


def service_pid(process: subprocess.Popen[bytes], argv: list[str]) -> int:
    for pid in descendants(process.pid):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1] == [a.encode() for a in argv]:
                return pid
    raise CheckFailed(f"no process {' '.join(argv)} under buildah run {process.pid}")


@contextlib.contextmanager
def serving(
    container: Container, log_path: Path, port: int, report: list[str], grace: float
) -> Iterator[subprocess.Popen[bytes]]:
    """Starts the image's command, waits for SERVING over gRPC health, and at the end sends SIGTERM and checks
    the exit."""
    started = time.monotonic()
    process = container.start(container.argv, log_path)
    try:
        try:
            wait_healthy(f"127.0.0.1:{port}", process, timeout=600)
        except (RuntimeError, TimeoutError) as err:
            raise CheckFailed(
                f"{container.spec.name} never became healthy: {err}; the end of {log_path}:\n"
                + log_path.read_text()[-3000:]
            ) from None
        report.append(
            f"- {container.spec.name}: SERVING over grpc.health.v1 on :{port} after {time.monotonic() - started:.1f} s"
        )
        yield process
        pid = service_pid(process, container.argv)
        stopping = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        try:
            process.wait(grace + 10)
        except subprocess.TimeoutExpired:
            raise CheckFailed(f"{container.spec.name} still running {grace + 10:.0f} s after SIGTERM") from None
        code = exit_status(log_path)
        if code != 0:
            raise CheckFailed(f"{container.spec.name} exited {code} after SIGTERM; see {log_path}")
        report.append(f"- {container.spec.name}: SIGTERM -> exit 0 in {time.monotonic() - stopping:.1f} s")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def healthcheck(container: Container, log_path: Path) -> str:
    """The image's own HEALTHCHECK command (compose's and Docker's), run in the same container."""
    test = (container.config.get("Healthcheck") or {}).get("Test") or []
    if test[:1] != ["CMD"]:
        raise CheckFailed(f"{container.spec.name}: no exec-form HEALTHCHECK in the image ({test})")
    code, output = container.run(test[1:], log_path, timeout=60)
    if code != 0:
        raise CheckFailed(f"{container.spec.name}: HEALTHCHECK exited {code}: {output[-500:]}")
    return next(line for line in output.splitlines() if line.startswith("healthy"))

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
a short run against the scorer, with the scripted OpenAI-compatible LLM listening where llama-server would; both
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
import base64
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "deploy"))

import check as deploy_check  # noqa: E402 - deploy/check.py: kustomize rendering
from promptclimb.optimizer.v1 import optimizer_pb2, optimizer_pb2_grpc  # noqa: E402
from promptclimb.scorer.v1 import scorer_pb2, scorer_pb2_grpc  # noqa: E402
from promptclimb_common.processes import wait_healthy  # noqa: E402
from tests.optimizer.scripted_llm import ScriptedLLM  # noqa: E402

DOCKER = ROOT / "deploy" / "docker"
CPU_DEV = ROOT / "deploy" / "k8s" / "overlays" / "cpu-dev"
COMPOSE = ROOT / "deploy" / "compose.yaml"
LOGS = ROOT / ".cache" / "promptclimb" / "image-check"
BASE = "localhost/promptclimb-base:bookworm"
BASE_PACKAGES = "python3,python3-venv,python-is-python3,ca-certificates"
IMAGES = {"scorer": "localhost/promptclimb/scorer:check", "optimizer": "localhost/promptclimb/optimizer:check",
          "reproduce": "localhost/promptclimb/reproduce:check"}
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
RUN_SPEC = dict(initial_pool_size=4, restarts=1, resets=1, iterations=2, templates_per_call=2, top_k=1)
TERMINAL = {optimizer_pb2.RUN_STATE_SUCCEEDED, optimizer_pb2.RUN_STATE_FAILED, optimizer_pb2.RUN_STATE_CANCELLED}


class CheckFailed(Exception):
    """A step of the check did not do what it must; the message says which and why."""


def sh(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, text=True, capture_output=True, **kwargs)
    if proc.returncode != 0:
        raise CheckFailed(f"{' '.join(cmd[:4])} ... exited {proc.returncode}: {(proc.stderr or proc.stdout)[-3000:]}")
    return proc


def say(text: str) -> None:
    print(text, flush=True)


# ---------------------------------------------------------------- build


def apt_mirror() -> str:
    """The Debian mirror apt uses for bookworm (deb822 sources first, then sources.list)."""
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for stanza in path.read_text().split("\n\n"):
            fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in stanza.splitlines()
                                                           if ":" in line and not line.startswith("#"))}
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
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(d for d in deps if d.startswith("torch=="))


def build(name: str, pip_flags: list[str]) -> float:
    args = {"scorer": {"PYTORCH_IMAGE": BASE, "TORCH_REQUIREMENT": torch_pin()}, "optimizer": {"PYTHON_IMAGE": BASE},
            "reproduce": {"SCORER_IMAGE": IMAGES["scorer"]}}[name]
    log_path = LOGS / f"build-{name}.log"
    started = time.monotonic()
    # Docker format keeps HEALTHCHECK and STOPSIGNAL, which OCI image configs drop.
    cmd = ["buildah", "bud", "--isolation", "chroot", "--layers", "--format", "docker", "-f", str(DOCKER / f"{name}.Dockerfile"),
           *pip_flags, *(x for k, v in args.items() for x in ("--build-arg", f"{k}={v}")), "-t", IMAGES[name], str(ROOT)]
    with log_path.open("w") as log:
        code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    if code != 0:
        raise CheckFailed(f"building the {name} image failed (exit {code}); the end of {log_path}:\n"
                          + log_path.read_text()[-3000:])
    return time.monotonic() - started


def image_config(tag: str) -> dict:
    """The image's config (User, Env, Entrypoint, Cmd, Volumes, Healthcheck) and its Size."""
    docker = json.loads(sh(["buildah", "inspect", "--type", "image", tag]).stdout)["Docker"]["config"]
    return {**docker, "Size": json.loads(sh(["podman", "image", "inspect", tag]).stdout)[0]["Size"]}


# ---------------------------------------------------------------- what the manifests say


@dataclass(frozen=True)
class Mount:
    source: Path
    target: str
    read_only: bool


@dataclass
class ContainerSpec:
    """One container as a manifest describes it, with its volumes made on this host."""

    name: str
    image: str  # key of IMAGES
    env: dict[str, str]
    mounts: list[Mount]
    user: str  # uid:gid the manifest runs it as
    command: list[str] | None = None  # replaces ENTRYPOINT (Kubernetes `command`)
    args: list[str] | None = None  # replaces CMD (Kubernetes `args`, compose `command`)
    hosts: tuple[str, ...] = ()
    init: list[ContainerSpec] = field(default_factory=list)

    def host_path(self, path: str) -> Path:
        """Where a path inside the container lies on this host (it must be on one of the mounts)."""
        for mount in sorted(self.mounts, key=lambda m: -len(m.target)):
            if path == mount.target or path.startswith(mount.target.rstrip("/") + "/"):
                return mount.source / path[len(mount.target):].lstrip("/")
        raise CheckFailed(f"{self.name}: {path} is on no volume")


def image_key(reference: str) -> str:
    for key in IMAGES:
        if reference.split(":")[0].endswith(f"promptclimb/{key}"):
            return key
    raise CheckFailed(f"image {reference!r} is none of ours")


def writable_dir(path: Path, mode: int, owner: tuple[int, int] = (0, 0)) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, *owner)
    path.chmod(mode)
    return path


def kubernetes_pods(volumes_root: Path) -> dict[str, ContainerSpec]:
    """The scorer Deployment's and the optimizer StatefulSet's containers in the cpu-dev render."""
    objs = deploy_check.render(CPU_DEV, deploy_check.tool("kubectl") or "kubectl")
    by_kind_name = {(o["kind"], o["metadata"]["name"]): o for o in objs}
    namespace = next(o["metadata"]["name"] for o in objs if o["kind"] == "Namespace")
    services = [o["metadata"]["name"] for o in objs if o["kind"] == "Service"]
    hosts = tuple(services + [f"{s}.{namespace}.svc" for s in services] + [f"{s}.{namespace}.svc.cluster.local" for s in services])

    def data_of(kind: str, name: str) -> dict[str, str]:
        obj = by_kind_name.get((kind, name))
        if obj is None:
            raise CheckFailed(f"cpu-dev renders no {kind}/{name}")
        if kind == "Secret":
            return {k: base64.b64decode(v).decode() for k, v in obj.get("data", {}).items()} | obj.get("stringData", {})
        return obj.get("data", {})

    def container(c: dict, spec: dict, volumes: dict[str, Path], owner: str) -> ContainerSpec:
        csc = c.get("securityContext", {})
        if csc.get("readOnlyRootFilesystem") is not True:
            raise CheckFailed(f"{owner}/{c['name']}: readOnlyRootFilesystem is not true")
        psc = spec.get("securityContext", {})
        user = f"{csc.get('runAsUser', psc.get('runAsUser'))}:{csc.get('runAsGroup', psc.get('runAsGroup'))}"
        env: dict[str, str] = {}
        for source in c.get("envFrom", []):
            if "configMapRef" in source:
                env |= data_of("ConfigMap", source["configMapRef"]["name"])
            if "secretRef" in source:
                env |= data_of("Secret", source["secretRef"]["name"])
        for item in c.get("env", []):
            if "value" in item:
                env[item["name"]] = item["value"]
            else:
                ref = item["valueFrom"].get("secretKeyRef") or item["valueFrom"].get("configMapKeyRef")
                kind = "Secret" if "secretKeyRef" in item["valueFrom"] else "ConfigMap"
                env[item["name"]] = data_of(kind, ref["name"])[ref["key"]]
        mounts = []
        for m in c.get("volumeMounts", []):
            if "subPath" in m:
                raise CheckFailed(f"{owner}/{c['name']}: subPath mounts are not emulated")
            mounts.append(Mount(volumes[m["name"]], m["mountPath"], bool(m.get("readOnly"))))
        return ContainerSpec(f"{owner}-{c['name']}", image_key(c["image"]), env, mounts, user, c.get("command"), c.get("args"), hosts)

    pods = {}
    for kind, name in (("Deployment", "scorer"), ("StatefulSet", "optimizer")):
        owner = by_kind_name[kind, name]
        spec = owner["spec"]["template"]["spec"]
        fs_group = spec.get("securityContext", {}).get("fsGroup", 0)
        volumes: dict[str, Path] = {}
        for v in spec.get("volumes", []):
            where = volumes_root / "k8s" / name / v["name"]
            if "emptyDir" in v:
                volumes[v["name"]] = writable_dir(where, 0o777)  # the kubelet's emptyDir mode
            elif "secret" in v or "configMap" in v:
                kind_ = "Secret" if "secret" in v else "ConfigMap"
                ref = v["secret"]["secretName"] if "secret" in v else v["configMap"]["name"]
                writable_dir(where, 0o755)
                for key, text in data_of(kind_, ref).items():
                    (where / key).write_text(text)
                    os.chown(where / key, 0, fs_group)
                    (where / key).chmod((v.get("secret") or v.get("configMap")).get("defaultMode", 0o644))
                volumes[v["name"]] = where
            else:
                raise CheckFailed(f"{kind}/{name}: volume {v['name']} is of a kind the check does not emulate: {sorted(v)}")
        for claim in owner["spec"].get("volumeClaimTemplates", []):
            # A provisioned volume with fsGroup: group-owned, setgid, group-writable.
            volumes[claim["metadata"]["name"]] = writable_dir(volumes_root / "k8s" / name / claim["metadata"]["name"], 0o2775,
                                                              (0, fs_group))
        main = container(spec["containers"][0], spec, volumes, name)
        main.init = [container(c, spec, volumes, name) for c in spec.get("initContainers", [])]
        pods[name] = main
    return pods


COMPOSE_VARIABLE = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error}, from `env` only."""

    def value(m: re.Match) -> str:
        name, op, arg = m.group(1), m.group(2) or "", m.group(3) or ""
        if env.get(name):
            return env[name]
        if op.endswith("?"):
            raise CheckFailed(f"compose.yaml needs {name}: {arg}")
        return arg if op.endswith("-") else ""

    return COMPOSE_VARIABLE.sub(value, text)


def compose_services(volumes_root: Path, model_dir: Path, data_dir: Path) -> tuple[dict[str, ContainerSpec], dict[str, str]]:
    """The scorer's and the optimizer's services of deploy/compose.yaml, with a test .env; returns them and that .env."""
    dotenv = {"PROMPTCLIMB_TASKS": "colors=/data/colors", "PROMPTCLIMB_SCORER_TOKEN": secrets.token_urlsafe(32),
              "PROMPTCLIMB_MODEL_DIR": str(model_dir), "PROMPTCLIMB_DATA_DIR": str(data_dir),
              "PROMPTCLIMB_GGUF": "unused.gguf", "GRAFANA_ADMIN_PASSWORD": secrets.token_urlsafe(16)}
    compose = yaml.safe_load(interpolate(COMPOSE.read_text(), dotenv))
    hosts = tuple(compose["services"])
    specs = {}
    for name in ("scorer", "optimizer"):
        svc = compose["services"][name]
        if svc.get("read_only") is not True:
            raise CheckFailed(f"compose.yaml {name}: read_only is not true")
        uid, gid = (int(x) for x in svc["user"].split(":"))
        mounts = []
        for volume in svc.get("volumes", []):
            source, target, *options = volume.split(":")
            if source.startswith(("/", ".")):
                host = (COMPOSE.parent / source).resolve()
            else:  # a named volume: Docker copies the image directory's owner into it
                host = writable_dir(volumes_root / "compose" / "volumes" / source, 0o755, (uid, gid))
            mounts.append(Mount(host, target, "ro" in options))
        for target in svc.get("tmpfs", []):
            mounts.append(Mount(writable_dir(volumes_root / "compose" / name / "tmpfs" / target.strip("/"), 0o1777), target, False))
        env = {k: str(v) for k, v in (svc.get("environment") or {}).items()}
        specs[name] = ContainerSpec(f"compose-{name}", image_key(svc["image"]), env, mounts, svc["user"],
                                    args=svc.get("command"), hosts=hosts)
    return specs, dotenv


# ---------------------------------------------------------------- running a container


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
        self.argv = (spec.command or self.config.get("Entrypoint") or []) + \
            (spec.args if spec.args is not None else ([] if spec.command else self.config.get("Cmd") or []))
        self.name = ""
        # The environment the process sees: the image's ENV, then the manifest's.
        self.env = dict(item.split("=", 1) for item in self.config.get("Env") or []) | spec.env

    def __enter__(self) -> Container:
        self.name = sh(["buildah", "from", "--pull-never", "--name", f"promptclimb-check-{self.spec.name}-{secrets.token_hex(3)}",
                        IMAGES[self.spec.image]]).stdout.strip()
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

    def __exit__(self, *exc) -> None:
        subprocess.run(["buildah", "rm", self.name], capture_output=True)

    def start(self, argv: list[str], log_path: Path) -> subprocess.Popen:
        cmd = ["buildah", "run", "--isolation", "chroot", "--no-hosts", "--user", self.spec.user,
               *(x for k, v in self.spec.env.items() for x in ("-e", f"{k}={v}")),
               *(x for m in self.spec.mounts for x in ("-v", f"{m.source}:{m.target}" + (":ro" if m.read_only else ""))),
               self.name, "--", "/bin/sh", "-c", f'"$@"; echo "{EXIT_MARK} $?"', "sh", *argv]
        with log_path.open("w") as log:
            return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def run(self, argv: list[str], log_path: Path, timeout: float = 300) -> tuple[int, str]:
        process = self.start(argv, log_path)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            raise CheckFailed(f"{self.spec.name}: {' '.join(argv)} still running after {timeout} s; see {log_path}") from None
        return exit_status(log_path), log_path.read_text()

    def probe(self, log_path: Path) -> dict[str, str]:
        paths = list(PROBE_PATHS) + list(self.config.get("Volumes") or {})
        paths += [m.target for m in self.spec.mounts if m.source.is_dir() and m.target not in paths]
        code, output = self.run(["python", "-c", PROBE, *paths], log_path, timeout=120)
        line = next((x for x in output.splitlines() if x.startswith("probe: ")), None)
        if code != 0 or line is None:
            raise CheckFailed(f"{self.spec.name}: the write probe failed (exit {code}); see {log_path}")
        found = json.loads(line.removeprefix("probe: "))
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


def service_pid(process: subprocess.Popen, argv: list[str]) -> int:
    for pid in descendants(process.pid):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1] == [a.encode() for a in argv]:
                return pid
    raise CheckFailed(f"no process {' '.join(argv)} under buildah run {process.pid}")


@contextlib.contextmanager
def serving(container: Container, log_path: Path, port: int, report: list[str], grace: float) -> Iterator[subprocess.Popen]:
    """Starts the image's command, waits for SERVING over gRPC health, and at the end sends SIGTERM and checks the exit."""
    started = time.monotonic()
    process = container.start(container.argv, log_path)
    try:
        try:
            wait_healthy(f"127.0.0.1:{port}", process, timeout=600)
        except (RuntimeError, TimeoutError) as err:
            raise CheckFailed(f"{container.spec.name} never became healthy: {err}; the end of {log_path}:\n"
                              + log_path.read_text()[-3000:]) from None
        report.append(f"- {container.spec.name}: SERVING over grpc.health.v1 on :{port} after {time.monotonic() - started:.1f} s")
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


# ---------------------------------------------------------------- the checks


def check_scorer(address: str, token: str, report: list[str]) -> str:
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    with grpc.insecure_channel(address) as channel:
        stub = scorer_pb2_grpc.ScorerStub(channel)
        tasks = stub.ListTasks(scorer_pb2.ListTasksRequest(), metadata=metadata, timeout=30).tasks
        if not tasks:
            raise CheckFailed("the scorer lists no task")
        task = tasks[0]
        report.append(f"- ListTasks: {task.task_id!r}, {task.num_classes} classes {list(task.class_names)}, model {task.model_name}, "
                      f"{', '.join(f'{scorer_pb2.Split.Name(s.split)} {s.num_images} images' for s in task.splits)}")
        templates = ["a photo of a {}.", "{}", "a {} with {two} holes"]
        reply = stub.Score(scorer_pb2.ScoreRequest(task_id=task.task_id, templates=templates, split=scorer_pb2.SPLIT_TRAIN),
                           metadata=metadata, timeout=60)
        scored = [r for r in reply.results if not r.error]
        if len(scored) != 2 or not all(r.total > 0 for r in scored) or not reply.results[2].error:
            raise CheckFailed(f"Score answered {reply}")
        for r in reply.results:
            report.append(f"  - Score {r.template!r}: " + (f"{r.correct}/{r.total} (random weights: chance level, not a result)"
                                                            if not r.error else f"error {r.error!r}"))
        return task.task_id


def check_optimizer_run(address: str, token: str, task_id: str, llm: ScriptedLLM, report: list[str]) -> None:
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    with grpc.insecure_channel(address) as channel:
        stub = optimizer_pb2_grpc.OptimizerStub(channel)
        started = time.monotonic()
        run_id = stub.StartRun(optimizer_pb2.StartRunRequest(spec=optimizer_pb2.RunSpec(task_id=task_id, **RUN_SPEC)),
                               metadata=metadata, timeout=30).run_id
        while True:
            run = stub.GetRun(optimizer_pb2.GetRunRequest(run_id=run_id), metadata=metadata, timeout=30)
            if run.state in TERMINAL or time.monotonic() - started > 300:
                break
            time.sleep(0.5)
    if run.state != optimizer_pb2.RUN_STATE_SUCCEEDED:
        raise CheckFailed(f"the run ended {optimizer_pb2.RunState.Name(run.state)}: {run.stop_reason!r}")
    c = run.counters
    report.append(f"- run {run_id}: {optimizer_pb2.RunState.Name(run.state)} ({run.stop_reason}) in {time.monotonic() - started:.1f} s, "
                  f"{c.iterations_done}/{c.iterations_total} iterations, {c.llm_calls} LLM calls (the scripted LLM saw "
                  f"{len(llm.seen)}), {c.templates_scored} templates scored; best {run.best[0].template!r}")


def run_profile(label: str, scorer: ContainerSpec, optimizer: ContainerSpec, scorer_token: str, optimizer_token: str,
                report: list[str]) -> None:
    report.append(f"\n### {label}\n")
    for init in scorer.init:
        with Container(init) as container:
            code, output = container.run(container.argv, LOGS / f"{init.name}.log")
            if code != 0:
                raise CheckFailed(f"init container {init.name} exited {code}: {output[-2000:]}")
            report.append(f"- init container {init.name}: exit 0 ({' '.join(container.argv)[:80]})")
    with Container(scorer) as s_box, Container(optimizer) as o_box:
        for box in (s_box, o_box):
            found = box.probe(LOGS / f"{box.spec.name}-probe.log")
            report.append(f"- {box.spec.name} as {box.spec.user}, root read-only: writes refused on "
                          f"{', '.join(p for p, r in found.items() if r != 'writable')}; writable: "
                          f"{', '.join(p for p, r in found.items() if r == 'writable')}")
        llm_url = o_box.env["OPTIMIZER_LLM_BASE_URL"]
        scorer_port, optimizer_port = int(s_box.env["SCORER_PORT"]), int(o_box.env["OPTIMIZER_PORT"])
        with serving(s_box, LOGS / f"{scorer.name}.log", scorer_port, report, float(s_box.env.get("SCORER_GRACE_SECONDS", 30))):
            report.append(f"- {scorer.name} HEALTHCHECK: {healthcheck(s_box, LOGS / f'{scorer.name}-healthcheck.log')}")
            task_id = check_scorer(f"127.0.0.1:{scorer_port}", scorer_token, report)
            with ScriptedLLM(port=int(re.search(r":(\d+)/", llm_url).group(1))) as llm, \
                    serving(o_box, LOGS / f"{optimizer.name}.log", optimizer_port, report, 30):
                report.append(f"- {optimizer.name}: scorer at {o_box.env['OPTIMIZER_SCORER']}, LLM at {llm_url} "
                              "(the scripted LLM), as the manifest says")
                check_optimizer_run(f"127.0.0.1:{optimizer_port}", optimizer_token, task_id, llm, report)
        state = o_box.env["OPTIMIZER_STATE_DIR"]
        if not optimizer.host_path(f"{state}/optimizer.sqlite3").is_file():
            raise CheckFailed(f"no optimizer.sqlite3 on the state volume {state}")
        report.append(f"- the optimizer's runs are on its state volume ({state}/optimizer.sqlite3)")


def check_state_dir_on_the_root(scorer: ContainerSpec, report: list[str]) -> None:
    """The scorer with its state dir on the read-only root must stop at once, naming the flag."""
    spec = ContainerSpec(scorer.name + "-bad-state", scorer.image, scorer.env | {"SCORER_STATE_DIR": "/app/state"},
                         scorer.mounts, scorer.user, scorer.command, scorer.args, scorer.hosts)
    with Container(spec) as box:
        started = time.monotonic()
        code, output = box.run(box.argv, LOGS / f"{spec.name}.log", timeout=120)
        elapsed = time.monotonic() - started
    message = next((line for line in output.splitlines() if line.startswith("scorer: ")), "")
    if code != 2 or "--state-dir /app/state" not in message:
        raise CheckFailed(f"with SCORER_STATE_DIR=/app/state the scorer exited {code}: {output[-1500:]}")
    report.append(f"- scorer with SCORER_STATE_DIR=/app/state (read-only root): exit 2 in {elapsed:.1f} s (buildah run included): "
                  f"`{message}`")


def run_all(volumes_root: Path, report: list[str]) -> None:
    """Both profiles, inside the private network namespace."""
    sh(["ip", "link", "set", "lo", "up"])
    pods = kubernetes_pods(volumes_root)
    scorer, optimizer = pods["scorer"], pods["optimizer"]
    tokens = json.loads(optimizer.host_path(optimizer.env["OPTIMIZER_TOKENS_FILE"]).read_text())["tokens"]
    run_token = next(t["token"] for t in tokens if "run" in t["rights"])
    run_profile("Kubernetes (deploy/k8s/overlays/cpu-dev, rendered)", scorer, optimizer, optimizer.env["SCORER_TOKEN"],
                run_token, report)
    check_state_dir_on_the_root(scorer, report)
    model, data = scorer.init[0].host_path("/models/clip"), scorer.init[1].host_path("/data")
    services, dotenv = compose_services(volumes_root, model, data)
    run_profile("compose (deploy/compose.yaml, interpolated with a test .env; model and data from the run above)",
                services["scorer"], services["optimizer"], dotenv["PROMPTCLIMB_SCORER_TOKEN"], "", report)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
            report.append(f"- built {IMAGES[name]} in {seconds:.0f} s ({cached} layers from cache): "
                          f"{config['Size'] / 1e6:.0f} MB, USER {config['User']}, ENTRYPOINT {config['Entrypoint']}")
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
            say(run_report.read_text() + f"\nimage-check: both images ran as the manifests say ({time.monotonic() - started:.0f} s "
                                         f"of running; logs in {LOGS.relative_to(ROOT)})")
            return 0
    say(f"image-check: FAILED (logs in {LOGS.relative_to(ROOT)})")
    return 1


if __name__ == "__main__":
    sys.exit(main())

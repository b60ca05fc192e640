"""The scorer's and the optimizer's containers as the manifests describe them: the Kubernetes cpu-dev render and
deploy/compose.yaml (resolved by docker-compose), with their volumes made on this host."""

from __future__ import annotations

import base64
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from checks.common import tool
from checks.compose import COMPOSE, ComposeRejected, resolve
from checks.k8s import render

from image_checks.common import IMAGES, ROOT, CheckFailed

CPU_DEV = ROOT / "deploy" / "k8s" / "overlays" / "cpu-dev"


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
                return mount.source / path[len(mount.target) :].lstrip("/")
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
    objs = render(CPU_DEV, tool("kubectl") or "kubectl")
    by_kind_name = {(o["kind"], o["metadata"]["name"]): o for o in objs}
    namespace = next(o["metadata"]["name"] for o in objs if o["kind"] == "Namespace")
    services = [o["metadata"]["name"] for o in objs if o["kind"] == "Service"]
    hosts = tuple(
        services + [f"{s}.{namespace}.svc" for s in services] + [f"{s}.{namespace}.svc.cluster.local" for s in services]
    )

    def data_of(kind: str, name: str) -> dict[str, str]:
        obj = by_kind_name.get((kind, name))
        if obj is None:
            raise CheckFailed(f"cpu-dev renders no {kind}/{name}")
        if kind == "Secret":
            decoded = {k: base64.b64decode(v).decode() for k, v in obj.get("data", {}).items()}
            return decoded | dict(obj.get("stringData", {}))
        return dict(obj.get("data", {}))

    def container(c: dict[str, Any], spec: dict[str, Any], volumes: dict[str, Path], owner: str) -> ContainerSpec:
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
        return ContainerSpec(
            f"{owner}-{c['name']}", image_key(c["image"]), env, mounts, user, c.get("command"), c.get("args"), hosts
        )

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
                raise CheckFailed(
                    f"{kind}/{name}: volume {v['name']} is of a kind the check does not emulate: {sorted(v)}"
                )
        for claim in owner["spec"].get("volumeClaimTemplates", []):
            # A provisioned volume with fsGroup: group-owned, setgid, group-writable.
            claim_name = claim["metadata"]["name"]
            volumes[claim_name] = writable_dir(volumes_root / "k8s" / name / claim_name, 0o2775, (0, fs_group))
        main = container(spec["containers"][0], spec, volumes, name)
        main.init = [container(c, spec, volumes, name) for c in spec.get("initContainers", [])]
        pods[name] = main
    return pods


def compose_services(
    volumes_root: Path, model_dir: Path, data_dir: Path
) -> tuple[dict[str, ContainerSpec], dict[str, str]]:
    """The scorer's and the optimizer's services of deploy/compose.yaml, resolved by Compose with a test .env;
    returns them and that .env."""
    dotenv = {
        "PROMPTCLIMB_TASKS": "colors=/data/colors",
        "PROMPTCLIMB_SCORER_TOKEN": secrets.token_urlsafe(32),
        "PROMPTCLIMB_OPTIMIZER_TOKEN": secrets.token_urlsafe(32),
        "PROMPTCLIMB_MODEL_DIR": str(model_dir),
        "PROMPTCLIMB_DATA_DIR": str(data_dir),
        "PROMPTCLIMB_GGUF": "unused.gguf",
        "GRAFANA_ADMIN_PASSWORD": secrets.token_urlsafe(16),
    }
    try:
        compose = resolve(COMPOSE, dotenv)
    except ComposeRejected as err:
        raise CheckFailed(f"compose.yaml with the test .env: {err}") from None
    hosts = tuple(compose["services"])
    specs = {}
    for name in ("scorer", "optimizer"):
        svc = compose["services"][name]
        if svc.get("read_only") is not True:
            raise CheckFailed(f"compose.yaml {name}: read_only is not true")
        uid, gid = (int(x) for x in svc["user"].split(":"))
        mounts = []
        for volume in svc.get("volumes", []):
            if volume["type"] == "bind":
                host = Path(volume["source"])
            else:  # a named volume: Docker copies the image directory's owner into it
                host = writable_dir(volumes_root / "compose" / "volumes" / volume["source"], 0o755, (uid, gid))
            mounts.append(Mount(host, volume["target"], bool(volume.get("read_only"))))
        for target in svc.get("tmpfs", []):
            tmpfs = writable_dir(volumes_root / "compose" / name / "tmpfs" / target.strip("/"), 0o1777)
            mounts.append(Mount(tmpfs, target, False))
        env = {k: str(v) for k, v in (svc.get("environment") or {}).items()}
        specs[name] = ContainerSpec(
            f"compose-{name}", image_key(svc["image"]), env, mounts, svc["user"], args=svc.get("command"), hosts=hosts
        )
    return specs, dotenv

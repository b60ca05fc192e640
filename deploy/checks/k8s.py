"""Kubernetes objects in general: kustomize renders, schema validation, pod hardening, references between objects.

Schemas are kubernetes-validate's (strict: unknown fields fail); the prometheus-operator kinds, which it does not
ship, are validated against deploy/k8s/schemas/. What no schema sees (selectors, named ports, volumes, ConfigMaps of
one render fitting together, and the hardening the team requires) is checked here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

from checks.common import K8S, Report, check_env_names, pinned, run

SCHEMAS = K8S / "schemas"
# Kubernetes version the manifests target (native gRPC probes need >= 1.27).
K8S_VERSION = "1.32"

Obj = dict[str, Any]


def render(overlay: Path, kubectl: str) -> list[Obj]:
    proc = run([kubectl, "kustomize", str(overlay)])
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip() or proc.stdout.strip())
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def custom_schemas() -> dict[tuple[str, str], Obj]:
    schemas = {}
    for path in sorted(SCHEMAS.glob("*.json")):
        schema = json.loads(path.read_text())
        props = schema["properties"]
        schemas[(props["apiVersion"]["const"], props["kind"]["const"])] = schema
    return schemas


def validate_schema(obj: Obj, customs: dict[tuple[str, str], Obj]) -> str | None:
    """None if valid, else why not."""
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key in customs:
        validator = jsonschema.Draft202012Validator(customs[key])
        errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.path))
        return "; ".join(f"{'.'.join(map(str, e.path)) or '<root>'}: {e.message}" for e in errors[:3]) or None
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as err:
        return f"{'.'.join(map(str, err.path))}: {err.message}"
    except kubernetes_validate.SchemaNotFoundError as err:
        return f"{err.message} (add a schema to deploy/k8s/schemas/)"
    return None


def check_schemas(name: str, objs: list[Obj], r: Report) -> None:
    customs = custom_schemas()
    for obj in objs:
        why = validate_schema(obj, customs)
        r.check(why is None, f"{name}: {obj['kind']}/{obj['metadata'].get('name')}", why or "")


def pod_templates(objs: list[Obj]) -> Iterator[tuple[Obj, Obj]]:
    for obj in objs:
        if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield obj, obj["spec"]["template"]


def matches(selector: dict[str, str] | None, labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def by_kind(objs: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind]


def named(objs: list[Obj], kind: str, name: str) -> Obj | None:
    return next((o for o in by_kind(objs, kind) if o["metadata"]["name"] == name), None)


def env_of(container: Obj, objs: list[Obj]) -> dict[str, str]:
    """The container's environment as far as the render shows it (ConfigMaps and literals)."""
    env: dict[str, str] = {}
    configmaps = {o["metadata"]["name"]: o.get("data", {}) for o in by_kind(objs, "ConfigMap")}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef")
        if ref:
            env.update(configmaps.get(ref["name"], {}))
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
    return env


def check_pod_hardening(where: str, spec: Obj, r: Report) -> None:
    """Non-root, seccomp, no service-account token, a grace period; per container a pinned image, a read-only
    root, no privilege escalation, no capabilities, resource requests."""
    psc = spec.get("securityContext", {})
    r.check(psc.get("runAsNonRoot") is True and psc.get("runAsUser", 0) != 0, where, "pod must run as a non-root user")
    r.check(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", where, "seccompProfile RuntimeDefault")
    r.check(spec.get("automountServiceAccountToken") is False, where, "automountServiceAccountToken must be false")
    r.check("terminationGracePeriodSeconds" in spec, where, "terminationGracePeriodSeconds must be set")
    for container in spec.get("initContainers", []) + spec["containers"]:
        cwhere = f"{where} container {container['name']}"
        r.check(pinned(container["image"]), cwhere, f"image {container['image']!r} is not pinned to a tag")
        csc = container.get("securityContext", {})
        r.check(csc.get("readOnlyRootFilesystem") is True, cwhere, "readOnlyRootFilesystem must be true")
        r.check(csc.get("allowPrivilegeEscalation") is False, cwhere, "allowPrivilegeEscalation must be false")
        r.check(csc.get("capabilities", {}).get("drop") == ["ALL"], cwhere, "capabilities must drop ALL")
        r.check(bool(container.get("resources", {}).get("requests")), cwhere, "resource requests must be set")


def check_services(name: str, objs: list[Obj], r: Report) -> None:
    """Every Service selects a pod template, and its named target ports are container port names."""
    templates = [t for _, t in pod_templates(objs)]
    for svc in by_kind(objs, "Service"):
        where = f"{name}: Service/{svc['metadata']['name']}"
        sel = svc["spec"].get("selector", {})
        pods = [t for t in templates if matches(sel, t["metadata"].get("labels", {}))]
        if not r.check(bool(pods), where, f"selector {sel} matches no pod template"):
            continue
        ports = {p["name"] for t in pods for c in t["spec"]["containers"] for p in c.get("ports", [])}
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            if isinstance(target, str):
                r.check(target in ports, where, f"targetPort {target!r} is not a container port name")


def check_workload_wiring(name: str, objs: list[Obj], r: Report) -> None:
    """Each workload: its selector, hardening, volumes, mounts, ConfigMaps and probes."""
    configmaps = {o["metadata"]["name"] for o in by_kind(objs, "ConfigMap")}
    pvcs = {o["metadata"]["name"] for o in by_kind(objs, "PersistentVolumeClaim")}
    for cm in by_kind(objs, "ConfigMap"):
        check_env_names(f"{name}: ConfigMap/{cm['metadata']['name']}", cm.get("data", {}), r)
    for owner, template in pod_templates(objs):
        where = f"{name}: {owner['kind']}/{owner['metadata']['name']}"
        spec = template["spec"]
        r.check(
            matches(owner["spec"]["selector"].get("matchLabels", {}), template["metadata"].get("labels", {})),
            where,
            "selector does not match the pod template's labels",
        )
        check_pod_hardening(where, spec, r)
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        claim_templates = {t["metadata"]["name"] for t in owner["spec"].get("volumeClaimTemplates", [])}
        for volume in volumes.values():
            if "configMap" in volume:
                cm_name = volume["configMap"]["name"]
                r.check(cm_name in configmaps, where, f"volume {volume['name']}: no ConfigMap {cm_name}")
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                r.check(claim in pvcs, where, f"volume {volume['name']}: no PersistentVolumeClaim {claim}")
        for container in spec.get("initContainers", []) + spec["containers"]:
            cwhere = f"{where} container {container['name']}"
            for mount in container.get("volumeMounts", []):
                r.check(
                    mount["name"] in volumes or mount["name"] in claim_templates,
                    cwhere,
                    f"mount of unknown volume {mount['name']}",
                )
            for source in container.get("envFrom", []):
                ref = source.get("configMapRef")
                if ref:
                    r.check(ref["name"] in configmaps, cwhere, f"envFrom: no ConfigMap {ref['name']}")
        for container in spec["containers"]:
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                r.check(probe in container, f"{where} container {container['name']}", f"{probe} missing")

"""Offline checks of deploy/: what `make deploy-check` runs.

- Kubernetes: renders every overlay under deploy/k8s/overlays with
  `kubectl kustomize`, validates every object against the Kubernetes JSON
  schemas of `kubernetes-validate` (strict: unknown fields fail) or, for the
  prometheus-operator kinds, against deploy/k8s/schemas/, then checks what the
  schemas cannot: references between objects (Service and monitor selectors,
  named ports, ConfigMaps), pinned images, the security context, probes, the
  firewall NetworkPolicy and the GPU request.
- Monitoring: `promtool check config` on the scrape config, `promtool check
  rules` and `promtool test rules` on the alerts, the dashboard's JSON and the
  PromQL of its panels (through `promtool check rules`), the metric names of
  dashboards and alerts against the names the services expose, and the
  PrometheusRule of deploy/k8s against deploy/monitoring/alerts.yml.
- Containers (no Docker engine here): pinned base images, non-root users,
  health checks, the optimizer's requirements against pyproject.toml's pins,
  the torch of the scorer's base image against the pin, .dockerignore against
  what the Dockerfiles copy, and deploy/compose.yaml's images and files.

    python deploy/check.py                      # everything; exit 1 on any failure
    python deploy/check.py --write-prometheusrule  # regenerate the PrometheusRule from alerts.yml
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
MONITORING = DEPLOY / "monitoring"
DOCKER = DEPLOY / "docker"
SCHEMAS = K8S / "schemas"
REPRODUCE = K8S / "reproduce"  # the reproduce grid as Indexed Jobs; not an overlay of base
PROMETHEUSRULE = K8S / "components" / "prometheus-operator" / "prometheusrule.yaml"
DASHBOARDS = sorted((MONITORING / "grafana").glob("*.json"))

# Kubernetes version the manifests target (native gRPC probes need >= 1.27).
K8S_VERSION = "1.32"

# The metric families the services expose: the contract between the services
# and the dashboard and alerts. tests/deploy/test_prometheus_scrape.py checks
# them against the live services' /metrics.
SCORER_METRICS = {
    "grpc_server_handled_total": "counter",
    "grpc_server_handling_seconds": "histogram",
    "scorer_templates_scored_total": "counter",
    "scorer_text_cache_hits_total": "counter",
    "scorer_text_cache_misses_total": "counter",
    "scorer_text_cache_bytes": "gauge",
    "scorer_batch_prompts": "histogram",
    "scorer_queue_wait_seconds": "histogram",
    "scorer_model_info": "gauge",
}
OPTIMIZER_METRICS = {
    "grpc_server_handled_total": "counter",
    "grpc_server_handling_seconds": "histogram",
    "optimizer_runs": "gauge",
    "optimizer_run_best_train_accuracy": "gauge",
    "optimizer_llm_calls_total": "counter",
    "optimizer_llm_tokens_total": "counter",
    "optimizer_llm_errors_total": "counter",
    "optimizer_scorer_calls_total": "counter",
}


def series_names(families: dict[str, str]) -> set[str]:
    """Names a query may use: histograms also have _bucket, _sum and _count."""
    names = set()
    for name, kind in families.items():
        names.add(name)
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


KNOWN_SERIES = series_names(SCORER_METRICS) | series_names(OPTIMIZER_METRICS) | {"up"}
OUR_PREFIXES = ("grpc_server_", "scorer_", "optimizer_")

# Grafana's variables, as promtool sees them when it checks a panel's PromQL.
GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
    "$scorer_job": "promptclimb-scorer",
    "$optimizer_job": "promptclimb-optimizer",
    "$prompt_usd_per_mtok": "0.5",
    "$completion_usd_per_mtok": "1.5",
}

# The only images compose and the manifests may run, all pinned to a tag.
PINNED_TAG = re.compile(r"^[\w./-]+(:[\w.+-]+)(@sha256:[0-9a-f]{64})?$")


# ---------------------------------------------------------------- reporting


class Report:
    def __init__(self) -> None:
        self.failures: list[str] = []
        self.passed = 0

    def check(self, ok: bool, what: str, why: str = "") -> bool:
        if ok:
            self.passed += 1
        else:
            self.failures.append(f"{what}: {why}" if why else what)
            print(f"FAIL {what}{': ' + why if why else ''}")
        return ok

    def section(self, title: str) -> None:
        print(f"== {title}")


def tool(name: str) -> str | None:
    """A tool on PATH, or in the venv that runs this script."""
    found = shutil.which(name)
    if found:
        return found
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else None


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kwargs)


# ---------------------------------------------------------------- kubernetes


def render(overlay: Path, kubectl: str) -> list[dict]:
    proc = run([kubectl, "kustomize", str(overlay)])
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip() or proc.stdout.strip())
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def custom_schemas() -> dict[tuple[str, str], dict]:
    schemas = {}
    for path in sorted(SCHEMAS.glob("*.json")):
        schema = json.loads(path.read_text())
        props = schema["properties"]
        schemas[(props["apiVersion"]["const"], props["kind"]["const"])] = schema
    return schemas


def validate_schema(obj: dict, customs: dict[tuple[str, str], dict]) -> str | None:
    """None if valid, else why not."""
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key in customs:
        errors = sorted(jsonschema.Draft202012Validator(customs[key]).iter_errors(obj), key=lambda e: list(e.path))
        if errors:
            return "; ".join(f"{'.'.join(map(str, e.path)) or '<root>'}: {e.message}" for e in errors[:3])
        return None
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as err:
        return f"{'.'.join(map(str, err.path))}: {err.message}"
    except kubernetes_validate.SchemaNotFoundError as err:
        return f"{err.message} (add a schema to deploy/k8s/schemas/)"
    return None


def pod_templates(objs: list[dict]) -> Iterator[tuple[dict, dict]]:
    for obj in objs:
        if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield obj, obj["spec"]["template"]


def matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def env_of(container: dict, objs: list[dict]) -> dict[str, str]:
    """The container's environment as far as the render shows it (ConfigMaps and literals)."""
    env: dict[str, str] = {}
    configmaps = {o["metadata"]["name"]: o.get("data", {}) for o in objs if o["kind"] == "ConfigMap"}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef")
        if ref:
            env.update(configmaps.get(ref["name"], {}))
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
    return env


def service_env_names() -> set[str]:
    """Every SCORER_* and OPTIMIZER_* variable the two CLIs read (one per flag)."""
    import argparse

    sys.path.insert(0, str(ROOT))
    from optimizer_service.config import add_serve_args
    from scorer_service.config import build_parser

    scorer = {f"SCORER_{a.dest.upper()}" for a in build_parser()._actions if a.dest != "help"}
    serve = argparse.ArgumentParser()
    add_serve_args(serve)
    optimizer = {f"OPTIMIZER_{a.dest.upper()}" for a in serve._actions if a.dest != "help"}
    # SCORER_TOKEN: not a flag but the variable --scorer-token-env names by default.
    return scorer | optimizer | {"SCORER_TASKS", "SCORER_TOKEN"}


def check_env_names(where: str, names: object, r: Report) -> None:
    try:
        known = service_env_names()
    except Exception as err:  # noqa: BLE001 - the services may be mid-edit
        r.check(False, where, f"cannot read the services' flags: {type(err).__name__}: {err}")
        return
    for name in names:
        if str(name).startswith(("SCORER_", "OPTIMIZER_")):
            r.check(name in known, where, f"{name} is no flag of the service (see python -m scorer_service --help / optimizer_service serve --help)")


def check_pod_hardening(where: str, spec: dict, r: Report) -> None:
    """Non-root, seccomp, no service-account token, a grace period; per container a pinned image, a read-only root,
    no privilege escalation, no capabilities, resource requests."""
    psc = spec.get("securityContext", {})
    r.check(psc.get("runAsNonRoot") is True and psc.get("runAsUser", 0) != 0, where, "pod must run as a non-root user")
    r.check(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", where, "seccompProfile RuntimeDefault")
    r.check(spec.get("automountServiceAccountToken") is False, where, "automountServiceAccountToken must be false")
    r.check("terminationGracePeriodSeconds" in spec, where, "terminationGracePeriodSeconds must be set")
    for container in spec.get("initContainers", []) + spec["containers"]:
        cwhere = f"{where} container {container['name']}"
        image = container["image"]
        r.check(bool(PINNED_TAG.match(image)) and not image.endswith(":latest"), cwhere, f"image {image!r} is not pinned to a tag")
        csc = container.get("securityContext", {})
        r.check(csc.get("readOnlyRootFilesystem") is True, cwhere, "readOnlyRootFilesystem must be true")
        r.check(csc.get("allowPrivilegeEscalation") is False, cwhere, "allowPrivilegeEscalation must be false")
        r.check(csc.get("capabilities", {}).get("drop") == ["ALL"], cwhere, "capabilities must drop ALL")
        r.check(bool(container.get("resources", {}).get("requests")), cwhere, "resource requests must be set")


def check_references(name: str, objs: list[dict], r: Report) -> None:
    """What the schemas cannot see: how the objects of one render fit together."""
    by_kind: dict[str, list[dict]] = {}
    for obj in objs:
        by_kind.setdefault(obj["kind"], []).append(obj)
    templates = list(pod_templates(objs))
    generated = {o["metadata"]["name"] for o in objs if o["kind"] in ("ConfigMap", "Secret")}
    configmaps = {o["metadata"]["name"] for o in by_kind.get("ConfigMap", [])}
    pvcs = {o["metadata"]["name"] for o in by_kind.get("PersistentVolumeClaim", [])}

    for cm in by_kind.get("ConfigMap", []):
        check_env_names(f"{name}: ConfigMap/{cm['metadata']['name']}", cm.get("data", {}), r)

    for svc in by_kind.get("Service", []):
        where = f"{name}: Service/{svc['metadata']['name']}"
        sel = svc["spec"].get("selector", {})
        pods = [t for _, t in templates if matches(sel, t["metadata"].get("labels", {}))]
        if not r.check(bool(pods), where, f"selector {sel} matches no pod template"):
            continue
        named = {p["name"] for t in pods for c in t["spec"]["containers"] for p in c.get("ports", [])}
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            if isinstance(target, str):
                r.check(target in named, where, f"targetPort {target!r} is not a container port name")

    for owner, template in templates:
        where = f"{name}: {owner['kind']}/{owner['metadata']['name']}"
        spec = template["spec"]
        r.check(matches(owner["spec"]["selector"].get("matchLabels", {}), template["metadata"].get("labels", {})), where,
                "selector does not match the pod template's labels")
        check_pod_hardening(where, spec, r)
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        claim_templates = {t["metadata"]["name"] for t in owner["spec"].get("volumeClaimTemplates", [])}
        for volume in volumes.values():
            if "configMap" in volume:
                r.check(volume["configMap"]["name"] in configmaps, where, f"volume {volume['name']}: no ConfigMap {volume['configMap']['name']}")
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                r.check(claim in pvcs, where, f"volume {volume['name']}: no PersistentVolumeClaim {claim}")
        for container in spec.get("initContainers", []) + spec["containers"]:
            cwhere = f"{where} container {container['name']}"
            for mount in container.get("volumeMounts", []):
                r.check(mount["name"] in volumes or mount["name"] in claim_templates, cwhere, f"mount of unknown volume {mount['name']}")
            for source in container.get("envFrom", []):
                ref = source.get("configMapRef")
                if ref:
                    r.check(ref["name"] in configmaps, cwhere, f"envFrom: no ConfigMap {ref['name']}")
        for container in spec["containers"]:
            cwhere = f"{where} container {container['name']}"
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                r.check(probe in container, cwhere, f"{probe} missing")
    del generated

    # The scorer, as issue 4 wants it.
    scorer = next((o for o in by_kind.get("Deployment", []) if o["metadata"]["name"] == "scorer"), None)
    if r.check(scorer is not None, f"{name}: Deployment/scorer", "missing"):
        spec = scorer["spec"]["template"]["spec"]
        container = next(c for c in spec["containers"] if c["name"] == "scorer")
        env = env_of(container, objs)
        grace = float(env.get("SCORER_GRACE_SECONDS", 30))
        r.check(spec["terminationGracePeriodSeconds"] > grace + 5, f"{name}: scorer",
                f"terminationGracePeriodSeconds {spec['terminationGracePeriodSeconds']} must exceed SCORER_GRACE_SECONDS {grace} + preStop")
        r.check(env.get("HF_HUB_OFFLINE") == "1", f"{name}: scorer", "HF_HUB_OFFLINE must be 1")
        r.check(bool(env.get("SCORER_TASKS")), f"{name}: scorer", "SCORER_TASKS must be set")
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        r.check(mounts.get("/models", {}).get("readOnly") is True, f"{name}: scorer", "the model volume must be mounted read-only")
        tls = bool(env.get("SCORER_TLS_CERT"))
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            handler = container[probe]
            if tls:  # kubelet's gRPC probes cannot speak TLS
                r.check("healthcheck.py" in " ".join(handler.get("exec", {}).get("command", [])), f"{name}: scorer {probe}",
                        "with TLS the probe must run /app/healthcheck.py")
            else:
                r.check(handler.get("grpc", {}).get("port") == 50051, f"{name}: scorer {probe}", "must be a native gRPC probe on 50051")
        if name == "gpu":
            limits = container["resources"].get("limits", {})
            r.check(str(limits.get("nvidia.com/gpu")) == "1", f"{name}: scorer", "must limit nvidia.com/gpu to 1")
            r.check(bool(spec.get("nodeSelector")), f"{name}: scorer", "must select GPU nodes")
    for kind, svc_name, headless in (("Service", "scorer", False), ("Service", "scorer-headless", True)):
        svc = next((o for o in by_kind.get(kind, []) if o["metadata"]["name"] == svc_name), None)
        if r.check(svc is not None, f"{name}: Service/{svc_name}", "missing"):
            r.check((svc["spec"].get("clusterIP") == "None") == headless, f"{name}: Service/{svc_name}",
                    "must be headless" if headless else "must not be headless")
    for kind in ("PodDisruptionBudget", "HorizontalPodAutoscaler"):
        r.check(any(o["metadata"]["name"] == "scorer" for o in by_kind.get(kind, [])), f"{name}: {kind}/scorer", "missing")

    optimizer = next((o for o in by_kind.get("StatefulSet", []) if o["metadata"]["name"] == "optimizer"), None)
    if r.check(optimizer is not None, f"{name}: StatefulSet/optimizer", "missing"):
        r.check(optimizer["spec"]["replicas"] == 1, f"{name}: optimizer", "one replica: SQLite has one writer")
        templates_ = optimizer["spec"].get("volumeClaimTemplates", [])
        container = optimizer["spec"]["template"]["spec"]["containers"][0]
        env = env_of(container, objs)
        state = env.get("OPTIMIZER_STATE_DIR")
        mounted = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        r.check(state in mounted and mounted[state] in {t["metadata"]["name"] for t in templates_}, f"{name}: optimizer",
                "OPTIMIZER_STATE_DIR must be on a volumeClaimTemplate")
        r.check(optimizer["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 60, f"{name}: optimizer",
                "terminationGracePeriodSeconds must leave time to checkpoint (>= 60)")
        r.check(optimizer["spec"]["template"]["metadata"]["labels"].get("promptclimb.io/scorer-client") == "true",
                f"{name}: optimizer", "must carry the scorer-client label the firewall admits")

    # The firewall.
    policies = {o["metadata"]["name"]: o for o in by_kind.get("NetworkPolicy", [])}
    deny = policies.get("default-deny")
    r.check(deny is not None and deny["spec"]["podSelector"] == {} and set(deny["spec"]["policyTypes"]) == {"Ingress", "Egress"}
            and not deny["spec"].get("ingress") and not deny["spec"].get("egress"), f"{name}: NetworkPolicy/default-deny",
            "must deny all ingress and egress in the namespace")
    fw = policies.get("scorer")
    if r.check(fw is not None, f"{name}: NetworkPolicy/scorer", "missing"):
        r.check(fw["spec"].get("egress") == [] and "Egress" in fw["spec"]["policyTypes"], f"{name}: NetworkPolicy/scorer",
                "the scorer may have no egress but DNS")
        grpc_rules = [rule for rule in fw["spec"]["ingress"] if any(p["port"] == 50051 for p in rule.get("ports", []))]
        r.check(bool(grpc_rules), f"{name}: NetworkPolicy/scorer", "no rule for the gRPC port")
        for rule in fw["spec"]["ingress"]:
            ports = {p["port"] for p in rule.get("ports", [])}
            r.check(bool(ports) and ports <= {50051, 9101}, f"{name}: NetworkPolicy/scorer", f"rule opens ports {ports or 'all'}")
            for peer in rule.get("from", []):
                r.check("ipBlock" not in peer, f"{name}: NetworkPolicy/scorer", "no ipBlock peers: clients are admitted by label")
                if 50051 in ports:
                    r.check(peer.get("podSelector", {}).get("matchLabels", {}).get("promptclimb.io/scorer-client") == "true",
                            f"{name}: NetworkPolicy/scorer", f"gRPC peer {peer} must require the scorer-client pod label")
        scorer_pods = [t for _, t in templates if t["metadata"]["labels"].get("app.kubernetes.io/name") == "scorer"]
        r.check(all(matches(fw["spec"]["podSelector"]["matchLabels"], t["metadata"]["labels"]) for t in scorer_pods) and scorer_pods,
                f"{name}: NetworkPolicy/scorer", "podSelector does not select the scorer pods")
    dns = policies.get("allow-dns-egress")
    r.check(dns is not None and all(p["port"] == 53 for rule in dns["spec"]["egress"] for p in rule["ports"]),
            f"{name}: NetworkPolicy/allow-dns-egress", "must allow port 53 only")

    # prometheus-operator monitors, when the overlay has them.
    services = by_kind.get("Service", [])
    for monitor in by_kind.get("ServiceMonitor", []):
        where = f"{name}: ServiceMonitor/{monitor['metadata']['name']}"
        hits = [s for s in services if matches(monitor["spec"]["selector"].get("matchLabels"), s["metadata"].get("labels", {}))]
        r.check(len(hits) == 1, where, f"selector must match exactly one Service, matches {[s['metadata']['name'] for s in hits]}")
        for svc in hits:
            ports = {p.get("name") for p in svc["spec"]["ports"]}
            for ep in monitor["spec"]["endpoints"]:
                r.check(ep.get("port") in ports, where, f"Service/{svc['metadata']['name']} has no port {ep.get('port')!r}")
            r.check(svc["metadata"]["labels"].get(monitor["spec"].get("jobLabel", "")) == "promptclimb-scorer", where,
                    "jobLabel must give job=promptclimb-scorer")
    for monitor in by_kind.get("PodMonitor", []):
        where = f"{name}: PodMonitor/{monitor['metadata']['name']}"
        hits = [t for _, t in templates if matches(monitor["spec"]["selector"].get("matchLabels"), t["metadata"].get("labels", {}))]
        r.check(bool(hits), where, "selector matches no pod template")
        for t in hits:
            ports = {p["name"] for c in t["spec"]["containers"] for p in c.get("ports", [])}
            for ep in monitor["spec"]["podMetricsEndpoints"]:
                r.check(ep.get("port") in ports, where, f"pod has no port {ep.get('port')!r}")
            r.check(t["metadata"]["labels"].get(monitor["spec"].get("jobLabel", "")) == "promptclimb-optimizer", where,
                    "jobLabel must give job=promptclimb-optimizer")
    for rule in by_kind.get("PrometheusRule", []):
        r.check(rule["spec"] == yaml.safe_load((MONITORING / "alerts.yml").read_text()), f"{name}: PrometheusRule/{rule['metadata']['name']}",
                "differs from deploy/monitoring/alerts.yml: run python deploy/check.py --write-prometheusrule")
    # Scrape annotations for a plain Prometheus.
    for owner, template in templates:
        ann = template["metadata"].get("annotations", {})
        if ann.get("prometheus.io/scrape") == "true":
            ports = {p["containerPort"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
            r.check(ann.get("prometheus.io/port", "").isdigit() and int(ann["prometheus.io/port"]) in ports,
                    f"{name}: {owner['kind']}/{owner['metadata']['name']}", "prometheus.io/port is not a container port")
    for owner in ("scorer", "optimizer"):
        t = next((t for o, t in templates if o["metadata"]["name"] == owner), None)
        if t is not None:
            r.check(t["metadata"].get("annotations", {}).get("prometheus.io/scrape") == "true", f"{name}: {owner}", "scrape annotations missing")


def check_kubernetes(r: Report) -> None:
    r.section(f"kubernetes (kubectl kustomize + kubernetes-validate {kubernetes_validate.__version__ if hasattr(kubernetes_validate, '__version__') else ''} against {K8S_VERSION})")
    kubectl = tool("kubectl")
    if not r.check(kubectl is not None, "kubectl", "not found (make deploy-check installs it)"):
        return
    customs = custom_schemas()
    overlays = sorted(p.parent for p in (K8S / "overlays").glob("*/kustomization.yaml"))
    r.check({o.name for o in overlays} >= {"cpu-dev", "gpu"}, "overlays", f"expected cpu-dev and gpu, found {[o.name for o in overlays]}")
    for overlay in overlays:
        try:
            objs = render(overlay, kubectl)
        except RuntimeError as err:
            r.check(False, f"kustomize {overlay.name}", str(err))
            continue
        kinds: dict[str, int] = {}
        for obj in objs:
            kinds[obj["kind"]] = kinds.get(obj["kind"], 0) + 1
            why = validate_schema(obj, customs)
            r.check(why is None, f"{overlay.name}: {obj['kind']}/{obj['metadata'].get('name')}", why or "")
        check_references(overlay.name, objs, r)
        print(f"   {overlay.name}: {len(objs)} objects ({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))})")
    try:
        check_reproduce_jobs(render(REPRODUCE, kubectl), r)
    except RuntimeError as err:
        r.check(False, "kustomize reproduce", str(err))


def check_reproduce_jobs(objs: list[dict], r: Report) -> None:
    """deploy/k8s/reproduce: an Indexed Job of one pod per grid cell, a suspended gather Job, one shared results volume."""
    sys.path.insert(0, str(ROOT))
    from reproduce.grid import cells, load_grid

    customs = custom_schemas()
    for obj in objs:
        why = validate_schema(obj, customs)
        r.check(why is None, f"reproduce: {obj['kind']}/{obj['metadata'].get('name')}", why or "")
    jobs = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Job"}
    claims = {o["metadata"]["name"]: o for o in objs if o["kind"] == "PersistentVolumeClaim"}
    grid_map = next((o for o in objs if o["kind"] == "ConfigMap" and "grid.toml" in o.get("data", {})), None)
    if not r.check(set(jobs) == {"reproduce-cells", "reproduce-gather"} and grid_map is not None, "reproduce",
                   f"needs Jobs reproduce-cells and reproduce-gather and a grid.toml ConfigMap, has {sorted(jobs)}"):
        return
    with tempfile.NamedTemporaryFile("w", suffix=".toml") as tmp:
        tmp.write(grid_map["data"]["grid.toml"])
        tmp.flush()
        grid = load_grid(Path(tmp.name), check_data=False)  # the data is on the cluster's volume
    cells_job, gather_job = jobs["reproduce-cells"], jobs["reproduce-gather"]
    r.check(cells_job["spec"].get("completionMode") == "Indexed", "reproduce-cells", "completionMode must be Indexed")
    r.check(cells_job["spec"].get("completions") == len(cells(grid)), "reproduce-cells",
            f"completions {cells_job['spec'].get('completions')} but grid.toml has {len(cells(grid))} cells "
            f"({len(grid.backbones)} backbones x {len(grid.datasets)} datasets x {len(grid.seeds)} seeds)")
    r.check(gather_job["spec"].get("suspend") is True, "reproduce-gather", "must be suspended until the cells are done")
    for name, job in jobs.items():
        spec = job["spec"]["template"]["spec"]
        check_pod_hardening(f"reproduce: Job/{name}", spec, r)
        container = spec["containers"][0]
        args = container.get("args", [])
        env = {e["name"]: e for e in container.get("env", [])}
        if name == "reproduce-cells":
            cell = args[args.index("--cell") + 1] if "--cell" in args else ""
            var = re.fullmatch(r"\$\((\w+)\)", cell)
            source = env.get(var.group(1), {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath", "") if var else ""
            r.check(source == "metadata.annotations['batch.kubernetes.io/job-completion-index']", "reproduce-cells",
                    f"--cell must be $(VAR) with VAR from the job-completion-index annotation, is {cell!r} ({source!r})")
        else:
            r.check("--gather" in args, "reproduce-gather", "must run --gather")
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        results = mounts.get(str(grid.out), {})
        claim = volumes.get(results.get("name"), {}).get("persistentVolumeClaim", {}).get("claimName")
        r.check(claim in claims and "ReadWriteMany" in claims[claim]["spec"]["accessModes"] and not results.get("readOnly"),
                f"reproduce: Job/{name}", f"grid.toml's out {grid.out} must be a writable ReadWriteMany volume shared by both Jobs")
        config_dir = str(Path(args[args.index("--config") + 1]).parent) if "--config" in args else None
        r.check(config_dir in mounts, f"reproduce: Job/{name}", "--config must be on the grid ConfigMap's mount")
        for needed in [grid.data_root, *(Path(b.model) for b in grid.backbones)]:
            r.check(any(Path(p) in (needed, *needed.parents) for p in mounts), f"reproduce: Job/{name}", f"{needed} is on no volume")
    r.check(len({str(j["spec"]["template"]["spec"]["volumes"]) for j in jobs.values()}) == 1, "reproduce",
            "both Jobs must mount the same volumes")
    print(f"   reproduce: {len(objs)} objects, {len(cells(grid))} cells")


# ---------------------------------------------------------------- monitoring


def promql_names(expr: str) -> set[str]:
    """Our metric names in a PromQL expression (not label names, not $variables)."""
    without_strings = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    without_labels = re.sub(r"\{[^}]*\}", "{}", without_strings)
    without_by = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", without_labels)
    tokens = set(re.findall(r"(?<![$\w.])[a-zA-Z_:][a-zA-Z0-9_:]*", without_by))
    return {t for t in tokens if t.startswith(OUR_PREFIXES) or t == "up"}


def dashboard_queries(dashboard: dict) -> Iterator[tuple[str, str]]:
    def walk(panels: list[dict]) -> Iterator[tuple[str, str]]:
        for panel in panels:
            for target in panel.get("targets", []):
                if target.get("expr"):
                    yield panel.get("title", "?"), target["expr"]
            yield from walk(panel.get("panels", []))

    yield from walk(dashboard.get("panels", []))


def check_monitoring(r: Report, promtool: str | None) -> None:
    r.section("monitoring (promtool, dashboards, metric names)")
    if not r.check(promtool is not None, "promtool", "not found (make deploy-check installs Debian's prometheus)"):
        return
    for cmd in (["check", "config", "prometheus.yml"], ["check", "rules", "alerts.yml"], ["test", "rules", "alerts.test.yml"]):
        proc = run([promtool, *cmd], cwd=MONITORING)
        r.check(proc.returncode == 0, f"promtool {' '.join(cmd)}", (proc.stdout + proc.stderr).strip()[-2000:])

    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    r.check({"promptclimb-scorer", "promptclimb-optimizer"} <= jobs, "prometheus.yml", f"jobs {jobs} lack promptclimb-scorer/-optimizer")

    alerts = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    names = {rule["alert"] for group in alerts["groups"] for rule in group["rules"]}
    r.check({"PromptclimbScorerDown", "PromptclimbScorerErrorRate", "PromptclimbLLMErrorRate"} <= names, "alerts.yml",
            "needs scorer-down, scorer error-rate and LLM error-rate alerts")
    for group in alerts["groups"]:
        for rule in group["rules"]:
            unknown = promql_names(str(rule["expr"])) - KNOWN_SERIES
            r.check(not unknown, f"alert {rule['alert']}", f"unknown metrics {sorted(unknown)}")

    r.check(bool(DASHBOARDS), "dashboards", "no deploy/monitoring/grafana/*.json")
    sys.path.insert(0, str(MONITORING))
    try:
        import make_dashboard
    finally:
        sys.path.pop(0)
    r.check(make_dashboard.OUT.exists() and make_dashboard.OUT.read_text() == make_dashboard.render(), str(make_dashboard.OUT.relative_to(ROOT)),
            "differs from what deploy/monitoring/make_dashboard.py writes: edit the script and run it")
    for path in DASHBOARDS:
        try:
            dashboard = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            r.check(False, str(path.relative_to(ROOT)), f"not JSON: {err}")
            continue
        where = str(path.relative_to(ROOT))
        r.check(bool(dashboard.get("uid")) and bool(dashboard.get("title")), where, "needs uid and title")
        ids = []

        def collect(panels: list[dict]) -> None:
            for panel in panels:
                ids.append(panel.get("id"))
                collect(panel.get("panels", []))

        collect(dashboard.get("panels", []))
        r.check(len(ids) == len(set(ids)) and None not in ids, where, "panel ids must be unique and set")
        queries = list(dashboard_queries(dashboard))
        used = set().union(*(promql_names(e) for _, e in queries)) if queries else set()
        for title, expr in queries:
            unknown = promql_names(expr) - KNOWN_SERIES
            r.check(not unknown, f"{where} panel {title!r}", f"unknown metrics {sorted(unknown)}")
        wanted = {"grpc_server_handled_total", "grpc_server_handling_seconds_bucket", "scorer_batch_prompts_bucket",
                  "scorer_text_cache_hits_total", "optimizer_llm_tokens_total", "optimizer_run_best_train_accuracy"}
        r.check(wanted <= used, where, f"panels missing for {sorted(wanted - used)}")
        # PromQL syntax: promtool parses each query as a recording rule.
        rules = {"groups": [{"name": "dashboard", "rules": [
            {"record": f"dashboard:query{i}", "expr": substitute(expr)} for i, (_, expr) in enumerate(queries)]}]}
        with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as tmp:
            yaml.safe_dump(rules, tmp)
        try:
            proc = run([promtool, "check", "rules", tmp.name])
        finally:
            os.unlink(tmp.name)
        r.check(proc.returncode == 0, f"{where} PromQL", (proc.stdout + proc.stderr).strip()[-2000:])


def substitute(expr: str) -> str:
    for var, value in sorted(GRAFANA_VARIABLES.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(var, value)
    return expr


def prometheusrule_text() -> str:
    alerts = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "promptclimb", "labels": {"app.kubernetes.io/name": "promptclimb"}},
        "spec": alerts,
    }
    header = "# Generated from deploy/monitoring/alerts.yml by `python deploy/check.py --write-prometheusrule`; do not edit.\n"
    return header + yaml.safe_dump(rule, sort_keys=False, width=1000)


def check_prometheusrule_file(r: Report) -> None:
    r.check(PROMETHEUSRULE.exists() and PROMETHEUSRULE.read_text() == prometheusrule_text(), str(PROMETHEUSRULE.relative_to(ROOT)),
            "out of date with deploy/monitoring/alerts.yml: run python deploy/check.py --write-prometheusrule")


# ---------------------------------------------------------------- containers


def pyproject_pins() -> dict[str, str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {}
    for dep in deps:
        name, _, version = dep.partition("==")
        pins[name.strip().lower()] = version.strip()
    return pins


def requirement_lines(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            out[name.strip().lower()] = version.strip() if sep else ""
    return out


def dockerfile_stages(path: Path) -> tuple[dict[str, str], list[tuple[str, list[str]]]]:
    """ARG defaults before the first FROM, and (instruction, args) of every line."""
    text = re.sub(r"\\\n", " ", path.read_text())
    args: dict[str, str] = {}
    lines = []
    for raw in text.splitlines():
        raw = raw.strip()
        if not raw or raw.startswith("#"):
            continue
        word, _, rest = raw.partition(" ")
        lines.append((word.upper(), rest.split()))
        if word.upper() == "ARG" and not any(w == "FROM" for w, _ in lines[:-1]):
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip().strip('"')
    return args, lines


def dockerignore_allows(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; '!' re-includes."""
    allowed = True
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.rstrip("/")
        if fnmatch.fnmatch(path, pat) or path.startswith(pat + "/") or fnmatch.fnmatch(path, pat.replace("**/", "")):
            allowed = negate
    return allowed


def check_containers(r: Report) -> None:
    r.section("containers (Dockerfiles, requirements, .dockerignore, compose)")
    pins = pyproject_pins()
    ignore = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")]

    opt = requirement_lines(DOCKER / "optimizer-requirements.txt")
    for name, version in opt.items():
        r.check(name in pins, f"optimizer-requirements.txt {name}", "not a dependency in pyproject.toml")
        r.check(pins.get(name) == version, f"optimizer-requirements.txt {name}", f"pinned {version or 'nothing'}, pyproject.toml pins {pins.get(name)}")
    scorer_only = ("torch", "transformers", "safetensors", "pillow", "numpy", "matplotlib", "redis")
    for heavy in scorer_only:
        r.check(heavy not in opt, "optimizer-requirements.txt", f"must not install {heavy}")
    missing = set(pins) - set(opt) - set(scorer_only)
    r.check(not missing, "optimizer-requirements.txt", f"pyproject.toml dependencies neither listed nor excluded: {sorted(missing)}")
    data = requirement_lines(DOCKER / "optimizer-data-requirements.txt")
    makefile_pin = re.search(r"^CLIP_BENCHMARK := (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    baselines_pin = re.search(r'^CLIP_BENCHMARK_PIN = "([^"]+)"', (ROOT / "optimizer_service" / "baselines.py").read_text(), re.M)
    pins_of_data = {f"{name}=={version}" for name, version in data.items()}
    r.check(pins_of_data == {makefile_pin and makefile_pin.group(1), baselines_pin and baselines_pin.group(1)},
            "optimizer-data-requirements.txt", "clip-benchmark must be pinned as in the Makefile and optimizer_service/baselines.py")
    build = requirement_lines(DOCKER / "build-requirements.txt")
    build_system = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    for tool in ("grpcio-tools", "setuptools"):
        r.check(f"{tool}=={build.get(tool)}" in build_system, "build-requirements.txt", f"{tool} must match [build-system]")

    for dockerfile, service in (("scorer.Dockerfile", "scorer_service"), ("optimizer.Dockerfile", "optimizer_service")):
        path = DOCKER / dockerfile
        args, lines = dockerfile_stages(path)
        froms = [a for w, a in lines if w == "FROM"]
        r.check(len(froms) >= 2, dockerfile, "must be multi-stage")
        stage_names = {a[2] for a in froms if len(a) >= 3 and a[1].upper() == "AS"}
        for a in froms:
            image = a[0]
            if image in stage_names:
                continue
            resolved = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), ""), image)
            r.check(bool(PINNED_TAG.match(resolved)) and not resolved.endswith(":latest"), dockerfile, f"base {resolved!r} is not pinned")
        final = max(i for i, (w, _) in enumerate(lines) if w == "FROM")
        tail = lines[final:]
        users = [a for w, a in tail if w == "USER"]
        r.check(bool(users) and users[-1][0].split(":")[0] not in ("root", "0"), dockerfile, "final stage must switch to a non-root USER")
        r.check(any(w == "HEALTHCHECK" and "/app/healthcheck.py" in " ".join(a) for w, a in tail), dockerfile, "HEALTHCHECK must use /app/healthcheck.py")
        entry = next((a for w, a in reversed(tail) if w == "ENTRYPOINT"), [])
        r.check(json.loads(" ".join(entry)) == ["python", "-m", service] if entry else False, dockerfile, f"ENTRYPOINT must be python -m {service}")
        for w, a in lines:
            if w == "COPY" and not any(x.startswith("--from") for x in a):
                for src in [x for x in a if not x.startswith("--")][:-1]:
                    r.check(dockerignore_allows(src.rstrip("/"), ignore), dockerfile, f"COPY {src}: excluded by .dockerignore")
                    r.check((ROOT / src).exists(), dockerfile, f"COPY {src}: no such path")
        env_names = [word.split("=", 1)[0] for w, a in tail if w == "ENV" for word in a if "=" in word]
        check_env_names(dockerfile, env_names, r)
        if dockerfile == "scorer.Dockerfile":
            env_text = " ".join(" ".join(a) for w, a in tail if w == "ENV")
            r.check("HF_HUB_OFFLINE=1" in env_text, dockerfile, "HF_HUB_OFFLINE=1 must be set in the final stage")
            base = args.get("PYTORCH_IMAGE", "")
            m = re.match(r"^pytorch/pytorch:(\d+\.\d+\.\d+)-cuda[\d.]+-cudnn\d+-runtime$", base)
            r.check(bool(m), dockerfile, f"PYTORCH_IMAGE {base!r} must be a pytorch/pytorch CUDA runtime tag")
            if m:
                r.check(m.group(1) == pins.get("torch"), dockerfile, f"base has torch {m.group(1)}, pyproject.toml pins {pins.get('torch')}")
            torch_arg = next((a for w, a in lines if w == "ARG" and a and a[0].startswith("TORCH_VERSION=")), None)
            r.check(torch_arg is not None and torch_arg[0].split("=", 1)[1] == pins.get("torch"), dockerfile, "ARG TORCH_VERSION must equal the torch pin")
    for needed in ("pyproject.toml", "protos", "promptclimb_common", "scorer_service", "optimizer_service", "deploy/docker/healthcheck.py"):
        r.check(dockerignore_allows(needed, ignore), ".dockerignore", f"excludes {needed}")
    for excluded in (".venv", ".git", "gen", "tests", "deploy/.env"):
        r.check(not dockerignore_allows(excluded, ignore), ".dockerignore", f"lets {excluded} into the build context")

    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    r.check({"scorer", "optimizer", "llama-server", "prometheus", "grafana"} <= set(services), "compose.yaml", f"services {sorted(services)}")
    for name, svc in services.items():
        image = svc.get("image", "")
        r.check(bool(PINNED_TAG.match(image)) and not image.endswith(":latest"), f"compose.yaml {name}", f"image {image!r} is not pinned")
        if "build" in svc:
            r.check((ROOT / svc["build"]["dockerfile"]).exists(), f"compose.yaml {name}", f"no {svc['build']['dockerfile']}")
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                r.check((DEPLOY / source).exists(), f"compose.yaml {name}", f"bind mount {source} does not exist")
            elif not source.startswith(("$", "/")):
                r.check(source in (compose.get("volumes") or {}), f"compose.yaml {name}", f"volume {source} is not declared")
    r.check(any(v.split(":")[0] in (compose.get("volumes") or {}) and v.split(":")[1] == "/var/lib/promptclimb"
                for v in services["optimizer"].get("volumes", [])), "compose.yaml optimizer", "state dir must be on a named volume")
    for name, svc in services.items():
        check_env_names(f"compose.yaml {name}", svc.get("environment", {}), r)
    scorer_env = services["scorer"].get("environment", {})
    r.check("healthcheck" in services["scorer"] and "healthcheck" in services["optimizer"], "compose.yaml", "scorer and optimizer need healthchecks")
    r.check(isinstance(scorer_env, dict) and "SCORER_TASKS" in scorer_env, "compose.yaml scorer", "SCORER_TASKS must be set")


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write-prometheusrule", action="store_true", help="regenerate the PrometheusRule from alerts.yml and exit")
    args = parser.parse_args(argv)
    if args.write_prometheusrule:
        PROMETHEUSRULE.write_text(prometheusrule_text())
        print(f"wrote {PROMETHEUSRULE.relative_to(ROOT)}")
        return 0

    r = Report()
    sections: list[Callable[[], None]] = [
        lambda: check_prometheusrule_file(r),
        lambda: check_kubernetes(r),
        lambda: check_monitoring(r, tool("promtool")),
        lambda: check_containers(r),
    ]
    for section in sections:
        try:
            section()
        except Exception as err:  # noqa: BLE001 - report and go on to the next section
            r.check(False, "check crashed", f"{type(err).__name__}: {err}")
    print(f"deploy-check: {r.passed} checks passed, {len(r.failures)} failed")
    return 1 if r.failures else 0


if __name__ == "__main__":
    sys.exit(main())

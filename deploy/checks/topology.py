"""promptclimb's own shape on Kubernetes, which no generic linter knows: the scorer and optimizer as issue 4 wants
them, the firewall around the scorer, the prometheus-operator monitors and the scrape annotations."""

from __future__ import annotations

import yaml

from checks import k8s, reproduce
from checks.common import K8S, MONITORING, Report, tool
from checks.k8s import Obj, by_kind, env_of, matches, named, pod_templates

GRPC_PORT, METRICS_PORT = 50051, 9101
SCORER_CLIENT = "promptclimb.io/scorer-client"


def check_scorer(name: str, objs: list[Obj], r: Report) -> None:
    scorer = named(objs, "Deployment", "scorer")
    if r.check(scorer is not None, f"{name}: Deployment/scorer", "missing"):
        assert scorer is not None
        spec = scorer["spec"]["template"]["spec"]
        container = next(c for c in spec["containers"] if c["name"] == "scorer")
        env = env_of(container, objs)
        grace = float(env.get("SCORER_GRACE_SECONDS", 30))
        r.check(
            spec["terminationGracePeriodSeconds"] > grace + 5,
            f"{name}: scorer",
            f"terminationGracePeriodSeconds {spec['terminationGracePeriodSeconds']} must exceed"
            f" SCORER_GRACE_SECONDS {grace} + preStop",
        )
        r.check(env.get("HF_HUB_OFFLINE") == "1", f"{name}: scorer", "HF_HUB_OFFLINE must be 1")
        r.check(bool(env.get("SCORER_TASKS")), f"{name}: scorer", "SCORER_TASKS must be set")
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        r.check(
            mounts.get("/models", {}).get("readOnly") is True,
            f"{name}: scorer",
            "the model volume must be mounted read-only",
        )
        tls = bool(env.get("SCORER_TLS_CERT"))
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            handler = container[probe]
            if tls:  # kubelet's gRPC probes cannot speak TLS
                r.check(
                    "healthcheck.py" in " ".join(handler.get("exec", {}).get("command", [])),
                    f"{name}: scorer {probe}",
                    "with TLS the probe must run /app/healthcheck.py",
                )
            else:
                r.check(
                    handler.get("grpc", {}).get("port") == GRPC_PORT,
                    f"{name}: scorer {probe}",
                    f"must be a native gRPC probe on {GRPC_PORT}",
                )
        if name == "gpu":
            limits = container["resources"].get("limits", {})
            r.check(str(limits.get("nvidia.com/gpu")) == "1", f"{name}: scorer", "must limit nvidia.com/gpu to 1")
            r.check(bool(spec.get("nodeSelector")), f"{name}: scorer", "must select GPU nodes")
    for svc_name, headless in (("scorer", False), ("scorer-headless", True)):
        svc = named(objs, "Service", svc_name)
        if r.check(svc is not None, f"{name}: Service/{svc_name}", "missing"):
            assert svc is not None
            r.check(
                (svc["spec"].get("clusterIP") == "None") == headless,
                f"{name}: Service/{svc_name}",
                "must be headless" if headless else "must not be headless",
            )
    for kind in ("PodDisruptionBudget", "HorizontalPodAutoscaler"):
        r.check(named(objs, kind, "scorer") is not None, f"{name}: {kind}/scorer", "missing")


def check_optimizer(name: str, objs: list[Obj], r: Report) -> None:
    optimizer = named(objs, "StatefulSet", "optimizer")
    if not r.check(optimizer is not None, f"{name}: StatefulSet/optimizer", "missing"):
        return
    assert optimizer is not None
    template = optimizer["spec"]["template"]
    r.check(optimizer["spec"]["replicas"] == 1, f"{name}: optimizer", "one replica: SQLite has one writer")
    claims = {t["metadata"]["name"] for t in optimizer["spec"].get("volumeClaimTemplates", [])}
    container = template["spec"]["containers"][0]
    state = env_of(container, objs).get("OPTIMIZER_STATE_DIR")
    mounted = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    r.check(
        state in mounted and mounted[state] in claims,
        f"{name}: optimizer",
        "OPTIMIZER_STATE_DIR must be on a volumeClaimTemplate",
    )
    r.check(
        template["spec"]["terminationGracePeriodSeconds"] >= 60,
        f"{name}: optimizer",
        "terminationGracePeriodSeconds must leave time to checkpoint (>= 60)",
    )
    r.check(
        template["metadata"]["labels"].get(SCORER_CLIENT) == "true",
        f"{name}: optimizer",
        "must carry the scorer-client label the firewall admits",
    )


def check_firewall(name: str, objs: list[Obj], r: Report) -> None:
    """Default deny; the scorer admits gRPC only from pods with the scorer-client label, and has no egress."""
    policies = {o["metadata"]["name"]: o for o in by_kind(objs, "NetworkPolicy")}
    deny = policies.get("default-deny")
    r.check(
        deny is not None
        and deny["spec"]["podSelector"] == {}
        and set(deny["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        and not deny["spec"].get("ingress")
        and not deny["spec"].get("egress"),
        f"{name}: NetworkPolicy/default-deny",
        "must deny all ingress and egress in the namespace",
    )
    fw = policies.get("scorer")
    where = f"{name}: NetworkPolicy/scorer"
    if r.check(fw is not None, where, "missing"):
        assert fw is not None
        r.check(
            fw["spec"].get("egress") == [] and "Egress" in fw["spec"]["policyTypes"],
            where,
            "the scorer may have no egress but DNS",
        )
        grpc_rules = [rule for rule in fw["spec"]["ingress"] if GRPC_PORT in {p["port"] for p in rule.get("ports", [])}]
        r.check(bool(grpc_rules), where, "no rule for the gRPC port")
        for rule in fw["spec"]["ingress"]:
            ports = {p["port"] for p in rule.get("ports", [])}
            r.check(bool(ports) and ports <= {GRPC_PORT, METRICS_PORT}, where, f"rule opens ports {ports or 'all'}")
            for peer in rule.get("from", []):
                r.check("ipBlock" not in peer, where, "no ipBlock peers: clients are admitted by label")
                if GRPC_PORT in ports:
                    r.check(
                        peer.get("podSelector", {}).get("matchLabels", {}).get(SCORER_CLIENT) == "true",
                        where,
                        f"gRPC peer {peer} must require the scorer-client pod label",
                    )
        scorer_pods = [
            t for _, t in pod_templates(objs) if t["metadata"]["labels"].get("app.kubernetes.io/name") == "scorer"
        ]
        r.check(
            bool(scorer_pods)
            and all(matches(fw["spec"]["podSelector"]["matchLabels"], t["metadata"]["labels"]) for t in scorer_pods),
            where,
            "podSelector does not select the scorer pods",
        )
    dns = policies.get("allow-dns-egress")
    r.check(
        dns is not None and all(p["port"] == 53 for rule in dns["spec"]["egress"] for p in rule["ports"]),
        f"{name}: NetworkPolicy/allow-dns-egress",
        "must allow port 53 only",
    )


def check_monitors(name: str, objs: list[Obj], r: Report) -> None:
    """prometheus-operator's monitors (when the overlay has them) and the scrape annotations for a plain Prometheus."""
    services = by_kind(objs, "Service")
    templates = list(pod_templates(objs))
    for monitor in by_kind(objs, "ServiceMonitor"):
        where = f"{name}: ServiceMonitor/{monitor['metadata']['name']}"
        selector = monitor["spec"]["selector"].get("matchLabels")
        hits = [s for s in services if matches(selector, s["metadata"].get("labels", {}))]
        r.check(
            len(hits) == 1,
            where,
            f"selector must match exactly one Service, matches {[s['metadata']['name'] for s in hits]}",
        )
        for svc in hits:
            ports = {p.get("name") for p in svc["spec"]["ports"]}
            for ep in monitor["spec"]["endpoints"]:
                r.check(
                    ep.get("port") in ports, where, f"Service/{svc['metadata']['name']} has no port {ep.get('port')!r}"
                )
            r.check(
                svc["metadata"]["labels"].get(monitor["spec"].get("jobLabel", "")) == "promptclimb-scorer",
                where,
                "jobLabel must give job=promptclimb-scorer",
            )
    for monitor in by_kind(objs, "PodMonitor"):
        where = f"{name}: PodMonitor/{monitor['metadata']['name']}"
        selector = monitor["spec"]["selector"].get("matchLabels")
        pods = [t for _, t in templates if matches(selector, t["metadata"].get("labels", {}))]
        r.check(bool(pods), where, "selector matches no pod template")
        for t in pods:
            ports = {p["name"] for c in t["spec"]["containers"] for p in c.get("ports", [])}
            for ep in monitor["spec"]["podMetricsEndpoints"]:
                r.check(ep.get("port") in ports, where, f"pod has no port {ep.get('port')!r}")
            r.check(
                t["metadata"]["labels"].get(monitor["spec"].get("jobLabel", "")) == "promptclimb-optimizer",
                where,
                "jobLabel must give job=promptclimb-optimizer",
            )
    alerts = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    for rule in by_kind(objs, "PrometheusRule"):
        r.check(
            rule["spec"] == alerts,
            f"{name}: PrometheusRule/{rule['metadata']['name']}",
            "differs from deploy/monitoring/alerts.yml: run python deploy/check.py --write-prometheusrule",
        )
    for owner, template in templates:
        ann = template["metadata"].get("annotations", {})
        if ann.get("prometheus.io/scrape") == "true":
            ports = {p["containerPort"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
            port = ann.get("prometheus.io/port", "")
            r.check(
                port.isdigit() and int(port) in ports,
                f"{name}: {owner['kind']}/{owner['metadata']['name']}",
                "prometheus.io/port is not a container port",
            )
    for owner_name in ("scorer", "optimizer"):
        found = next((t for o, t in templates if o["metadata"]["name"] == owner_name), None)
        if found is not None:
            r.check(
                found["metadata"].get("annotations", {}).get("prometheus.io/scrape") == "true",
                f"{name}: {owner_name}",
                "scrape annotations missing",
            )


def check_references(name: str, objs: list[Obj], r: Report) -> None:
    """What the schemas cannot see: how the objects of one render fit together, and promptclimb's own rules."""
    k8s.check_services(name, objs, r)
    k8s.check_workload_wiring(name, objs, r)
    check_scorer(name, objs, r)
    check_optimizer(name, objs, r)
    check_firewall(name, objs, r)
    check_monitors(name, objs, r)


def check_kubernetes(r: Report) -> None:
    r.section(f"kubernetes (kubectl kustomize, kubernetes-validate against {k8s.K8S_VERSION}, references)")
    kubectl = tool("kubectl")
    if not r.check(kubectl is not None, "kubectl", "not found (make deploy-check installs it)"):
        return
    assert kubectl is not None
    overlays = sorted(p.parent for p in (K8S / "overlays").glob("*/kustomization.yaml"))
    r.check(
        {o.name for o in overlays} >= {"cpu-dev", "gpu"},
        "overlays",
        f"expected cpu-dev and gpu, found {[o.name for o in overlays]}",
    )
    for overlay in overlays:
        try:
            objs = k8s.render(overlay, kubectl)
        except RuntimeError as err:
            r.check(False, f"kustomize {overlay.name}", str(err))
            continue
        k8s.check_schemas(overlay.name, objs, r)
        check_references(overlay.name, objs, r)
        kinds: dict[str, int] = {}
        for obj in objs:
            kinds[obj["kind"]] = kinds.get(obj["kind"], 0) + 1
        print(f"   {overlay.name}: {len(objs)} objects ({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))})")
    try:
        objs = k8s.render(reproduce.REPRODUCE, kubectl)
    except RuntimeError as err:
        r.check(False, "kustomize reproduce", str(err))
        return
    reproduce.check_reproduce_jobs(objs, r)

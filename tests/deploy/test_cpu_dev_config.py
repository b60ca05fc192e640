"""The cpu-dev overlay's configuration drives the real services.

Renders deploy/k8s/overlays/cpu-dev, runs what its init containers run (a
random-weight tiny CLIP, the synthetic dataset), then starts the scorer and the
optimizer the way their containers do: no flags, only the rendered ConfigMaps
as environment, the Secrets as files and variables. Only what a test must
change is changed: /models, /data, /var/... and /etc/... become temporary
directories and the ports loopback ones of the kernel's choice (port 0, read back
from the port file each service writes). The dev tokens must then open
(and only open) what the manifests intend.
"""

from __future__ import annotations

import base64
import signal
import subprocess
import sys
import time

import grpc
import pytest

from promptclimb.optimizer.v1 import optimizer_pb2, optimizer_pb2_grpc
from promptclimb.scorer.v1 import scorer_pb2, scorer_pb2_grpc
from tests.conftest import prerequisite
from tests.deploy import REPO, load_check
from tests.procs import start_process, start_redis, stop_process, wait_for_ports

check = load_check()
kubectl = check.tool("kubectl")
pytestmark = prerequisite(kubectl is None, why="no kubectl: `make deploy-check` installs it")
OVERLAY = REPO / "deploy" / "k8s" / "overlays" / "cpu-dev"


def by_prefix(objs: list[dict], kind: str, prefix: str) -> dict:
    """A generated object (kustomize appends a content hash to the name)."""
    return next(o for o in objs if o["kind"] == kind and o["metadata"]["name"].startswith(prefix + "-"))


def secret_files(secret: dict, directory) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for key, value in secret["data"].items():
        (directory / key).write_bytes(base64.b64decode(value))


def remap(env: dict[str, str], tmp, ports: dict[str, object]) -> dict[str, str]:
    out = {}
    for key, value in env.items():
        for prefix in ("/models", "/data", "/var/cache/promptclimb", "/var/lib/promptclimb", "/etc/promptclimb"):
            if value.startswith(prefix) or f"={prefix}" in value:
                value = value.replace(prefix, str(tmp) + prefix)
        out[key] = value
    out.update({k: str(v) for k, v in ports.items()})
    return out


def pod_command(objs: list[dict], kind: str, name: str, container: str, init: bool = False) -> list[str]:
    owner = next(o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name)
    spec = owner["spec"]["template"]["spec"]
    c = next(c for c in spec["initContainers" if init else "containers"] if c["name"] == container)
    command: list[str] = c.get("command", []) + c.get("args", [])
    return command


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cpu-dev")
    objs = check.render(OVERLAY, kubectl)
    # The scorer's init containers, as the pod runs them (paths moved under tmp).
    script = by_prefix(objs, "ConfigMap", "scorer-dev-data")["data"]["make_dev_data.py"]
    (tmp / "scripts").mkdir()
    (tmp / "scripts" / "make_dev_data.py").write_text(script)
    for init in ("random-model", "synthetic-data"):
        command = [
            part.replace("/models", f"{tmp}/models")
            .replace("/data", f"{tmp}/data")
            .replace("/scripts", f"{tmp}/scripts")
            for part in pod_command(objs, "Deployment", "scorer", init, init=True)
        ]
        assert command[0] == "python"
        subprocess.run([sys.executable, *command[1:]], cwd=REPO, check=True, capture_output=True, timeout=300)
    secret_files(by_prefix(objs, "Secret", "scorer-tokens"), tmp / "etc/promptclimb/scorer-tokens")
    secret_files(by_prefix(objs, "Secret", "optimizer-tokens"), tmp / "etc/promptclimb/optimizer-tokens")
    credentials = {
        k: base64.b64decode(v).decode() for k, v in by_prefix(objs, "Secret", "optimizer-credentials")["data"].items()
    }

    scorer_env = remap(
        by_prefix(objs, "ConfigMap", "scorer-config")["data"],
        tmp,
        {
            "SCORER_HOST": "127.0.0.1",
            "SCORER_PORT": 0,
            "SCORER_METRICS_PORT": 0,
            "SCORER_PORT_FILE": tmp / "scorer.ports.json",
        },
    )
    scorer_command = pod_command(objs, "Deployment", "scorer", "scorer")
    assert scorer_command == []  # the image's ENTRYPOINT: python -m scorer_service
    # The overlay's quota store is its Redis Service (components/quota-redis); here a redis-server on loopback.
    assert scorer_env["SCORER_QUOTA_STORE"] == "redis://quota-redis:6379/0"
    assert any(o["kind"] == "Deployment" and o["metadata"]["name"] == "quota-redis" for o in objs)
    redis, scorer_env["SCORER_QUOTA_STORE"] = start_redis(tmp / "redis")
    scorer = start_process(["scorer_service"], tmp / "scorer.log", env={**scorer_env, "HF_HUB_OFFLINE": "1"})
    optimizer = None
    try:
        scorer_address = f"127.0.0.1:{wait_for_ports(tmp / 'scorer.ports.json', scorer, timeout=180).grpc}"
        optimizer_env = remap(
            by_prefix(objs, "ConfigMap", "optimizer-config")["data"],
            tmp,
            {
                "OPTIMIZER_HOST": "127.0.0.1",
                "OPTIMIZER_PORT": 0,
                "OPTIMIZER_METRICS_PORT": 0,
                "OPTIMIZER_PORT_FILE": tmp / "optimizer.ports.json",
                "OPTIMIZER_SCORER": scorer_address,
            },
        )
        optimizer_args = pod_command(objs, "StatefulSet", "optimizer", "optimizer")
        assert optimizer_args == ["serve"]
        optimizer = start_process(
            ["optimizer_service", *optimizer_args],
            tmp / "optimizer.log",
            env={
                **optimizer_env,
                "SCORER_TOKEN": credentials["scorer-token"],
                "OPENAI_API_KEY": credentials["openai-api-key"],
            },
        )
        optimizer_address = f"127.0.0.1:{wait_for_ports(tmp / 'optimizer.ports.json', optimizer, timeout=60).grpc}"
        yield {
            "scorer": scorer_address,
            "optimizer": optimizer_address,
            "tmp": tmp,
            "objs": objs,
            "processes": {"scorer": scorer, "optimizer": optimizer},
        }
    finally:
        if optimizer is not None:
            stop_process(optimizer)
        stop_process(scorer)
        stop_process(redis)


def status_of(call) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def bearer(token: str) -> tuple:
    return (("authorization", f"Bearer {token}"),)


def test_scorer_serves_the_dev_task_to_token_holders_only(stack):
    with grpc.insecure_channel(stack["scorer"]) as channel:
        stub = scorer_pb2_grpc.ScorerStub(channel)
        request = scorer_pb2.ScoreRequest(task_id="colors", templates=["a photo of a {}."])
        assert status_of(lambda: stub.Score(request, timeout=30)) == grpc.StatusCode.UNAUTHENTICATED
        reply = stub.Score(request, metadata=bearer("dev-only-scorer-token-not-a-secret"), timeout=60)
        assert reply.results[0].total == 4  # 4 classes, 1 shot (SCORER_SHOTS)
        test_split = scorer_pb2.ScoreRequest(task_id="colors", templates=["{}"], split=scorer_pb2.SPLIT_TEST)
        other_team = bearer("dev-only-other-team-token-not-a-secret")
        assert (
            status_of(lambda: stub.Score(test_split, metadata=other_team, timeout=30))
            == grpc.StatusCode.PERMISSION_DENIED
        )
        # Nor does the optimizer's own token open the test split: no confused deputy.
        optimizer = bearer("dev-only-scorer-token-not-a-secret")
        assert (
            status_of(lambda: stub.Score(test_split, metadata=optimizer, timeout=30))
            == grpc.StatusCode.PERMISSION_DENIED
        )
        assert status_of(lambda: stub.Score(request, metadata=other_team, timeout=30)) == grpc.StatusCode.OK


def test_optimizer_takes_the_dev_user_token(stack):
    with grpc.insecure_channel(stack["optimizer"]) as channel:
        stub = optimizer_pb2_grpc.OptimizerStub(channel)
        assert (
            status_of(lambda: stub.ListRuns(optimizer_pb2.ListRunsRequest(), timeout=10))
            == grpc.StatusCode.UNAUTHENTICATED
        )
        stub.ListRuns(
            optimizer_pb2.ListRunsRequest(), metadata=bearer("dev-only-optimizer-token-not-a-secret"), timeout=10
        )
    assert (stack["tmp"] / "var/lib/promptclimb").is_dir()  # OPTIMIZER_STATE_DIR, the StatefulSet's volume


def test_container_healthcheck_passes_against_both(stack):
    for address in (stack["scorer"], stack["optimizer"]):
        port = address.rsplit(":", 1)[1]
        proc = subprocess.run(
            [sys.executable, str(REPO / "deploy/docker/healthcheck.py")],
            env={"HEALTHCHECK_PORT": port},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert proc.returncode == 0, proc.stderr


def test_sigterm_exits_cleanly_within_the_pods_grace_periods(stack):
    """What the kubelet does to a pod being deleted: SIGTERM, then SIGKILL after terminationGracePeriodSeconds."""
    owners = {o["metadata"]["name"]: o for o in stack["objs"] if o["kind"] in ("Deployment", "StatefulSet")}
    for name in ("optimizer", "scorer"):
        grace = owners[name]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        process = stack["processes"][name]
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(grace) == 0, f"{name} exited with {process.returncode}"
        assert time.monotonic() - started < grace

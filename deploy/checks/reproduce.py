"""deploy/k8s/reproduce: the paper's grid as an Indexed Job of one pod per cell, a suspended gather Job, and one
shared results volume. The cell count comes from reproduce.grid, the code that runs the cells."""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

from checks.common import K8S, ROOT, Report
from checks.k8s import Obj, check_pod_hardening, check_schemas

REPRODUCE = K8S / "reproduce"  # not an overlay of base
COMPLETION_INDEX = "metadata.annotations['batch.kubernetes.io/job-completion-index']"


def cell_index_source(args: list[str], env: dict[str, Obj]) -> tuple[str, str]:
    """The --cell argument, and the field its $(VAR) is taken from."""
    cell = args[args.index("--cell") + 1] if "--cell" in args else ""
    var = re.fullmatch(r"\$\((\w+)\)", cell)
    source = env.get(var.group(1), {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath", "") if var else ""
    return cell, source


def check_reproduce_jobs(objs: list[Obj], r: Report) -> None:
    sys.path.insert(0, str(ROOT))
    from reproduce.grid import cells, load_grid

    check_schemas("reproduce", objs, r)
    jobs = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Job"}
    claims = {o["metadata"]["name"]: o for o in objs if o["kind"] == "PersistentVolumeClaim"}
    grid_map = next((o for o in objs if o["kind"] == "ConfigMap" and "grid.toml" in o.get("data", {})), None)
    if not r.check(
        set(jobs) == {"reproduce-cells", "reproduce-gather"} and grid_map is not None,
        "reproduce",
        f"needs Jobs reproduce-cells and reproduce-gather and a grid.toml ConfigMap, has {sorted(jobs)}",
    ):
        return
    assert grid_map is not None
    with tempfile.NamedTemporaryFile("w", suffix=".toml") as tmp:
        tmp.write(grid_map["data"]["grid.toml"])
        tmp.flush()
        grid = load_grid(Path(tmp.name), check_data=False)  # the data is on the cluster's volume
    n_cells = len(cells(grid))
    cells_job, gather_job = jobs["reproduce-cells"], jobs["reproduce-gather"]
    r.check(cells_job["spec"].get("completionMode") == "Indexed", "reproduce-cells", "completionMode must be Indexed")
    r.check(
        cells_job["spec"].get("completions") == n_cells,
        "reproduce-cells",
        f"completions {cells_job['spec'].get('completions')} but grid.toml has {n_cells} cells "
        f"({len(grid.backbones)} backbones x {len(grid.datasets)} datasets x {len(grid.seeds)} seeds)",
    )
    r.check(gather_job["spec"].get("suspend") is True, "reproduce-gather", "must be suspended until the cells are done")
    for name, job in jobs.items():
        where = f"reproduce: Job/{name}"
        spec = job["spec"]["template"]["spec"]
        check_pod_hardening(where, spec, r)
        container = spec["containers"][0]
        args = container.get("args", [])
        if name == "reproduce-cells":
            cell, source = cell_index_source(args, {e["name"]: e for e in container.get("env", [])})
            r.check(
                source == COMPLETION_INDEX,
                "reproduce-cells",
                f"--cell must be $(VAR) with VAR from the job-completion-index annotation, is {cell!r} ({source!r})",
            )
        else:
            r.check("--gather" in args, "reproduce-gather", "must run --gather")
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        results = mounts.get(str(grid.out), {})
        claim = volumes.get(results.get("name"), {}).get("persistentVolumeClaim", {}).get("claimName")
        shared = claim in claims and "ReadWriteMany" in claims[claim]["spec"]["accessModes"]
        r.check(
            shared and not results.get("readOnly"),
            where,
            f"grid.toml's out {grid.out} must be a writable ReadWriteMany volume shared by both Jobs",
        )
        config_dir = str(Path(args[args.index("--config") + 1]).parent) if "--config" in args else None
        r.check(config_dir in mounts, where, "--config must be on the grid ConfigMap's mount")
        for needed in [grid.data_root, *(Path(b.model) for b in grid.backbones)]:
            r.check(any(Path(p) in (needed, *needed.parents) for p in mounts), where, f"{needed} is on no volume")
    r.check(
        len({str(j["spec"]["template"]["spec"]["volumes"]) for j in jobs.values()}) == 1,
        "reproduce",
        "both Jobs must mount the same volumes",
    )
    print(f"   reproduce: {len(objs)} objects, {n_cells} cells")

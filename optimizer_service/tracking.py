"""Opt-in MLflow tracking (`--mlflow [URI]`, the `mlflow` extra): one MLflow run per promptclimb run, logged from
its written report (report.py), so every front end logs the same things.

- params: the run's spec (RunSettings, as result.json has it), the LLM model and the scorer's model digest;
- metrics per step: the best and mean train accuracy of the scored candidates, and the accuracy on every split
  measured (train, val, test) of the template train selection held after that step;
- metrics at the end: each evaluation row's accuracy per split (baselines, answer), LLM calls, tokens, and the
  cost in dollars (left out, not logged as 0, when the model has no price);
- artifacts: result.json, accuracy.png, summary.md and best_templates.txt.

A local directory (the default ./mlruns, or a file: URI) is MLflow's file store. MLflow 3 keeps that store in
maintenance mode and refuses it unless MLFLOW_ALLOW_FILE_STORE is set; asking for a directory is asking for it, so
it is set for that URI. A database or server URI (sqlite:///..., http://...) is passed on as it is.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import structlog

from optimizer_service.report import PLOT, RESULT, SUMMARY

log = structlog.get_logger(__name__)

EXPERIMENT = "promptclimb"
SPLITS = ("train", "val", "test")


class TrackingUnavailable(RuntimeError):
    """MLflow is not installed: `pip install 'promptclimb[mlflow]'`."""


def require_mlflow() -> None:
    """Fails before a run starts, not after it ends, when --mlflow is asked for without MLflow installed."""
    import importlib.util

    if importlib.util.find_spec("mlflow") is None:
        raise TrackingUnavailable("--mlflow needs MLflow: pip install 'promptclimb[mlflow]'")


def log_to_mlflow(tracking_uri: str, report_dir: Path, experiment: str = EXPERIMENT) -> str:
    """Logs the report in `report_dir` as an MLflow run of `experiment`; returns the MLflow run id."""
    require_mlflow()
    import mlflow

    result = json.loads((report_dir / RESULT).read_text())
    if is_file_store(tracking_uri):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=result["run_id"]) as active:
        mlflow.set_tags({"promptclimb.run_id": result["run_id"], "promptclimb.state": result["state"]})
        mlflow.log_params(params_of(result))
        for point in result["curve"]:
            mlflow.log_metrics(
                {
                    "best_train_accuracy": point["best_train_accuracy"],
                    "mean_train_accuracy": point["mean_train_accuracy"],
                },
                step=point["step"],
            )
        for held in result["selected"]:
            accuracies = {f"selected_{s}_accuracy": held[f"{s}_accuracy"] for s in SPLITS if f"{s}_accuracy" in held}
            mlflow.log_metrics(accuracies, step=held["step"])
        mlflow.log_metrics(final_metrics(result))
        for name in (RESULT, PLOT, SUMMARY):
            if (report_dir / name).exists():
                mlflow.log_artifact(str(report_dir / name))
        best = "\n".join(b["template"] for b in result["best"]) + "\n"
        mlflow.log_text(best, "best_templates.txt")
        run_id: str = active.info.run_id
    log.info("mlflow_run_logged", tracking_uri=tracking_uri, mlflow_run_id=run_id, run_id=result["run_id"])
    return run_id


def is_file_store(tracking_uri: str) -> bool:
    """A path or a file: URI (MLflow's file store), not a database or a server."""
    return tracking_uri.startswith("file:") or "://" not in tracking_uri


def params_of(result: dict[str, Any]) -> dict[str, str]:
    """The spec as MLflow params (strings of at most 6000 characters, MLflow's limit), plus model and LLM."""
    params = {f"spec.{k}": json.dumps(v) if isinstance(v, list | dict) else str(v) for k, v in result["spec"].items()}
    params["model_digest"] = result["model_digest"]
    if result.get("llm"):
        params["llm.model"] = result["llm"]["model"]
        params["llm.base_url"] = result["llm"]["base_url"]
    return {k: v[:6000] for k, v in params.items()}


def final_metrics(result: dict[str, Any]) -> dict[str, float]:
    counters = result["counters"]
    metrics = {
        "llm_calls": float(counters["llm_calls"]),
        "llm_tokens": float(counters["llm_prompt_tokens"] + counters["llm_completion_tokens"]),
        "templates_scored": float(counters["templates_scored"]),
    }
    cost = (result.get("llm") or {}).get("cost_usd")
    if cost is not None:
        metrics["llm_cost_usd"] = cost
    for row in result.get("evaluation", []):
        name = re.sub(r"[^0-9A-Za-z_]+", "_", row["label"])
        for split, accuracy in row["accuracy"].items():
            metrics[f"{name}_{split}_accuracy"] = accuracy
    return metrics

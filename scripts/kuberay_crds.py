"""Copy KubeRay's CRD schemas into cluster/kuberay/crds/ for the manifest tests, descriptions removed.

    python scripts/kuberay_crds.py KUBERAY_CHECKOUT VERSION   # e.g. a clone of ray-project/kuberay at v1.7.0

Only the openAPIV3Schema of the stored version (v1) is kept (as JSON, ~10x smaller than the CRD file);
tests/cluster/test_recipes.py validates the manifests against it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

KINDS = ("rayclusters", "rayjobs")


def strip(node):
    if isinstance(node, dict):
        return {k: strip(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [strip(v) for v in node]
    return node


def main(checkout: str, version: str) -> None:
    out = Path(__file__).resolve().parents[1] / "cluster" / "kuberay" / "crds"
    out.mkdir(parents=True, exist_ok=True)
    for kind in KINDS:
        crd = yaml.safe_load((Path(checkout) / f"ray-operator/config/crd/bases/ray.io_{kind}.yaml").read_text())
        stored = [v for v in crd["spec"]["versions"] if v["served"] and v["storage"]]
        schemas = {v["name"]: strip(v["schema"]["openAPIV3Schema"]) for v in stored}
        doc = {"kuberay": version, "kind": crd["spec"]["names"]["kind"], "schemas": schemas}
        (out / f"{kind}.json").write_text(json.dumps(doc, separators=(",", ":"), sort_keys=True) + "\n")
        print(f"{kind}: versions {sorted(schemas)} -> {out / f'{kind}.json'}")


if __name__ == "__main__":
    main(*sys.argv[1:3])

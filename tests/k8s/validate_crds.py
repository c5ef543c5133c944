#!/usr/bin/env python3
"""Checks the CustomResourceDefinitions in charts/knit/crds/ without a cluster.

1. Each file is one apiextensions.k8s.io/v1 CRD that kubernetes-validate accepts (strict) for
   Kubernetes 1.29.0 and for the newest version the package knows, with the group, names and
   versions Linkerd users expect (EXPECTED below), Knit's label and Helm's keep annotation.
2. Each version's openAPIV3Schema is structural, as the API server requires: every node has a
   type (or is int-or-string / preserve-unknown-fields), every object says what it holds, the
   logical junctors (oneOf, ...) only add constraints, defaults satisfy their schema, and printer
   columns point at fields that exist.
3. Every custom resource in Knit's own manifests (MANIFEST_GLOBS) validates against the schema of
   its apiVersion, with unknown fields refused (the API server would prune them, so Knit would
   never see them). So does each of GOOD_DOCUMENTS (Linkerd-style manifests beyond Knit's own),
   and each of BAD_DOCUMENTS is refused, for the reason it was written for.

Usage: python3 tests/k8s/validate_crds.py   (the repository root is found from this file's path)
Needs the PyPI packages kubernetes-validate, jsonschema and PyYAML. Prints one line per check and
stops at the first failure, naming the file, the document and the reason; exit status 1 then.
"""

import copy
import importlib.resources
import json
import re
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = ROOT / "charts" / "knit" / "crds"
MANIFEST_GLOBS = ["crates/knit-control/tests/manifests/*.yaml", "crates/knit/src/demo/*.yaml"]
K8S_VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]

# (group, kind): plural, served versions, storage version, short names.
EXPECTED = {
    ("policy.linkerd.io", "Server"): ("servers", ["v1beta1", "v1beta2", "v1beta3"], "v1beta3", ["srv"]),
    ("policy.linkerd.io", "AuthorizationPolicy"): ("authorizationpolicies", ["v1alpha1"], "v1alpha1", ["authzpolicy"]),
    ("policy.linkerd.io", "MeshTLSAuthentication"): ("meshtlsauthentications", ["v1alpha1"], "v1alpha1", ["meshtlsauthn"]),
    ("policy.linkerd.io", "NetworkAuthentication"): ("networkauthentications", ["v1alpha1"], "v1alpha1", ["netauthn", "networkauthn"]),
    ("policy.linkerd.io", "HTTPRoute"): ("httproutes", ["v1beta1", "v1beta2", "v1beta3"], "v1beta3", []),
    ("policy.linkerd.io", "HTTPLocalRateLimitPolicy"): ("httplocalratelimitpolicies", ["v1alpha1"], "v1alpha1", []),
    ("workload.linkerd.io", "ExternalWorkload"): ("externalworkloads", ["v1beta1"], "v1beta1", []),
    ("split.smi-spec.io", "TrafficSplit"): ("trafficsplits", ["v1alpha2"], "v1alpha2", ["ts"]),
    ("policy.linkerd.io", "EgressNetwork"): ("egressnetworks", ["v1alpha1"], "v1alpha1", []),
    ("multicluster.linkerd.io", "Link"): ("links", ["v1alpha1", "v1alpha2", "v1alpha3"], "v1alpha3", []),
}

# Groups whose resources are not ours to check: the Gateway API ships its own CRDs.
FOREIGN_GROUPS = {"gateway.networking.k8s.io"}

# Documents the schemas must refuse: (what, document, a word the error must contain).
BAD_DOCUMENTS = [
    ("Link without targetClusterName",
     {"apiVersion": "multicluster.linkerd.io/v1alpha3", "kind": "Link", "metadata": {"name": "bad"},
      "spec": {"gatewayAddress": "10.0.0.1"}}, "targetClusterName"),
    ("v1alpha1 Link with a federatedServiceSelector (it came in v1alpha3)",
     {"apiVersion": "multicluster.linkerd.io/v1alpha1", "kind": "Link", "metadata": {"name": "bad"},
      "spec": {"targetClusterName": "east", "federatedServiceSelector": {}}}, "federatedServiceSelector"),
    ("EgressNetwork without a trafficPolicy",
     {"apiVersion": "policy.linkerd.io/v1alpha1", "kind": "EgressNetwork", "metadata": {"name": "bad"},
      "spec": {"networks": [{"cidr": "203.0.113.0/24"}]}}, "trafficPolicy"),
    ("EgressNetwork with a trafficPolicy that is neither Allow nor Deny",
     {"apiVersion": "policy.linkerd.io/v1alpha1", "kind": "EgressNetwork", "metadata": {"name": "bad"},
      "spec": {"trafficPolicy": "Audit"}}, "Audit"),
    ("Server whose port is neither an integer nor a string",
     {"apiVersion": "policy.linkerd.io/v1beta3", "kind": "Server", "metadata": {"name": "bad"},
      "spec": {"podSelector": {}, "port": [8080]}}, "port"),
    ("Server with both podSelector and externalWorkloadSelector",
     {"apiVersion": "policy.linkerd.io/v1beta3", "kind": "Server", "metadata": {"name": "bad"},
      "spec": {"podSelector": {}, "externalWorkloadSelector": {}, "port": 80}}, "valid under each of"),
    ("Server with no selector",
     {"apiVersion": "policy.linkerd.io/v1beta2", "kind": "Server", "metadata": {"name": "bad"},
      "spec": {"port": 80}}, "not valid under any of"),
    ("v1beta1 Server without podSelector (it has no externalWorkloadSelector)",
     {"apiVersion": "policy.linkerd.io/v1beta1", "kind": "Server", "metadata": {"name": "bad"},
      "spec": {"externalWorkloadSelector": {}, "port": 80}}, "podSelector"),
    ("Server with a misspelt field",
     {"apiVersion": "policy.linkerd.io/v1beta3", "kind": "Server", "metadata": {"name": "bad"},
      "spec": {"podSelector": {}, "port": 80, "proxyProtocl": "HTTP/1"}}, "proxyProtocl"),
    ("Server selector with an unknown operator",
     {"apiVersion": "policy.linkerd.io/v1beta3", "kind": "Server", "metadata": {"name": "bad"},
      "spec": {"podSelector": {"matchExpressions": [{"key": "app", "operator": "Like"}]}, "port": 80}}, "Like"),
    ("TrafficSplit without spec.service",
     {"apiVersion": "split.smi-spec.io/v1alpha2", "kind": "TrafficSplit", "metadata": {"name": "bad"},
      "spec": {"backends": [{"service": "b", "weight": 1}]}}, "service"),
    ("TrafficSplit backend with a fractional weight",
     {"apiVersion": "split.smi-spec.io/v1alpha2", "kind": "TrafficSplit", "metadata": {"name": "bad"},
      "spec": {"service": "a", "backends": [{"service": "b", "weight": 0.5}]}}, "weight"),
    ("MeshTLSAuthentication with neither identities nor identityRefs",
     {"apiVersion": "policy.linkerd.io/v1alpha1", "kind": "MeshTLSAuthentication", "metadata": {"name": "bad"},
      "spec": {}}, "not valid under any of"),
    ("MeshTLSAuthentication with both identities and identityRefs",
     {"apiVersion": "policy.linkerd.io/v1alpha1", "kind": "MeshTLSAuthentication", "metadata": {"name": "bad"},
      "spec": {"identities": ["*"], "identityRefs": [{"kind": "ServiceAccount", "name": "web"}]}}, "valid under each of"),
    ("MeshTLSAuthentication with an empty list of identities",
     {"apiVersion": "policy.linkerd.io/v1alpha1", "kind": "MeshTLSAuthentication", "metadata": {"name": "bad"},
      "spec": {"identities": []}}, "identities"),
    ("NetworkAuthentication network without cidr",
     {"apiVersion": "policy.linkerd.io/v1alpha1", "kind": "NetworkAuthentication", "metadata": {"name": "bad"},
      "spec": {"networks": [{"except": ["10.0.0.0/8"]}]}}, "cidr"),
    ("AuthorizationPolicy without requiredAuthenticationRefs",
     {"apiVersion": "policy.linkerd.io/v1alpha1", "kind": "AuthorizationPolicy", "metadata": {"name": "bad"},
      "spec": {"targetRef": {"kind": "Server", "name": "s"}}}, "requiredAuthenticationRefs"),
    ("AuthorizationPolicy targetRef whose kind is not a kind name",
     {"apiVersion": "policy.linkerd.io/v1alpha1", "kind": "AuthorizationPolicy", "metadata": {"name": "bad"},
      "spec": {"targetRef": {"kind": "my server", "name": "s"}, "requiredAuthenticationRefs": []}}, "my server"),
    ("HTTPLocalRateLimitPolicy whose rate is a string",
     {"apiVersion": "policy.linkerd.io/v1alpha1", "kind": "HTTPLocalRateLimitPolicy", "metadata": {"name": "bad"},
      "spec": {"targetRef": {"kind": "Server", "name": "s"}, "total": {"requestsPerSecond": "100"}}}, "100"),
    ("HTTPRoute path match of an unknown type",
     {"apiVersion": "policy.linkerd.io/v1beta3", "kind": "HTTPRoute", "metadata": {"name": "bad"},
      "spec": {"rules": [{"matches": [{"path": {"type": "Glob", "value": "/*"}}]}]}}, "Glob"),
    ("HTTPRoute backend weight above 1000000",
     {"apiVersion": "policy.linkerd.io/v1beta3", "kind": "HTTPRoute", "metadata": {"name": "bad"},
      "spec": {"rules": [{"backendRefs": [{"name": "b", "port": 80, "weight": 1000001}]}]}}, "1000001"),
    ("v1beta2 HTTPRoute with rule timeouts (they came in v1beta3)",
     {"apiVersion": "policy.linkerd.io/v1beta2", "kind": "HTTPRoute", "metadata": {"name": "bad"},
      "spec": {"rules": [{"timeouts": {"request": "1s"}}]}}, "timeouts"),
    ("HTTPRoute redirect with a 307 status code",
     {"apiVersion": "policy.linkerd.io/v1beta3", "kind": "HTTPRoute", "metadata": {"name": "bad"},
      "spec": {"rules": [{"filters": [{"type": "RequestRedirect", "requestRedirect": {"statusCode": 307}}]}]}}, "307"),
    ("ExternalWorkload port 0",
     {"apiVersion": "workload.linkerd.io/v1beta1", "kind": "ExternalWorkload", "metadata": {"name": "bad"},
      "spec": {"ports": [{"port": 0}]}}, "less than the minimum"),
    ("ExternalWorkload meshTLS without serverName",
     {"apiVersion": "workload.linkerd.io/v1beta1", "kind": "ExternalWorkload", "metadata": {"name": "bad"},
      "spec": {"meshTLS": {"identity": "a.b.serviceaccount.identity.knit.cluster.local"}}}, "serverName"),
    ("ExternalWorkload with three workloadIPs",
     {"apiVersion": "workload.linkerd.io/v1beta1", "kind": "ExternalWorkload", "metadata": {"name": "bad"},
      "spec": {"workloadIPs": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}, {"ip": "10.0.0.3"}]}}, "workloadIPs"),
]

# Linkerd-style documents the schemas must accept as they are, beyond Knit's own manifests.
GOOD_DOCUMENTS = [
    ("Link as linkerd multicluster link writes it",
     {"apiVersion": "multicluster.linkerd.io/v1alpha3", "kind": "Link", "metadata": {"name": "east", "namespace": "linkerd-multicluster"},
      "spec": {"targetClusterName": "east", "targetClusterDomain": "cluster.local", "targetClusterLinkerdNamespace": "linkerd",
               "clusterCredentialsSecret": "cluster-credentials-east", "gatewayAddress": "172.18.0.40", "gatewayPort": "4143",
               "gatewayIdentity": "linkerd-gateway.linkerd-multicluster.serviceaccount.identity.linkerd.cluster.local",
               "probeSpec": {"path": "/ready", "port": "4191", "period": "3s", "timeout": "30s", "failureThreshold": "3"},
               "selector": {"matchLabels": {"mirror.linkerd.io/exported": "true"}},
               "remoteDiscoverySelector": {"matchLabels": {"mirror.linkerd.io/exported": "remote-discovery"}},
               "federatedServiceSelector": {"matchLabels": {"mirror.linkerd.io/federated": "member"}}}}),
    ("EgressNetwork denying everything outside the cluster",
     {"apiVersion": "policy.linkerd.io/v1alpha1", "kind": "EgressNetwork", "metadata": {"name": "all", "namespace": "linkerd-egress"},
      "spec": {"trafficPolicy": "Deny"}}),
    ("EgressNetwork allowing one network with an exception",
     {"apiVersion": "policy.linkerd.io/v1alpha1", "kind": "EgressNetwork", "metadata": {"name": "partners"},
      "spec": {"networks": [{"cidr": "203.0.113.0/24", "except": ["203.0.113.7/32"]}], "trafficPolicy": "Allow"}}),
    ("v1beta1 Server with podSelector and a named port",
     {"apiVersion": "policy.linkerd.io/v1beta1", "kind": "Server", "metadata": {"name": "web-http"},
      "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "port": "http", "proxyProtocol": "HTTP/1"}}),
    ("v1beta3 Server with accessPolicy",
     {"apiVersion": "policy.linkerd.io/v1beta3", "kind": "Server", "metadata": {"name": "web-http"},
      "spec": {"podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["web"]}]},
               "port": 8080, "accessPolicy": "all-authenticated"}}),
    ("MeshTLSAuthentication identityRef without a name (every service account of the namespace)",
     {"apiVersion": "policy.linkerd.io/v1alpha1", "kind": "MeshTLSAuthentication", "metadata": {"name": "ns"},
      "spec": {"identityRefs": [{"kind": "ServiceAccount"}]}}),
    ("v1beta3 HTTPRoute on a Service, with headers, redirect, weights and timeouts",
     {"apiVersion": "policy.linkerd.io/v1beta3", "kind": "HTTPRoute", "metadata": {"name": "books"},
      "spec": {"parentRefs": [{"group": "core", "kind": "Service", "name": "books", "port": 8080}],
               "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/v2"},
                                       "headers": [{"name": "x-canary", "value": "1"}], "method": "GET"}],
                          "filters": [{"type": "RequestHeaderModifier",
                                       "requestHeaderModifier": {"set": [{"name": "x-route", "value": "v2"}]}}],
                          "backendRefs": [{"name": "books-v2", "port": 8080, "weight": 10}],
                          "timeouts": {"request": "2s", "backendRequest": "500ms"}},
                         {"filters": [{"type": "RequestRedirect",
                                       "requestRedirect": {"scheme": "https", "statusCode": 301}}]}]}}),
    ("v1beta1 HTTPRoute on a Server with a backend filter",
     {"apiVersion": "policy.linkerd.io/v1beta1", "kind": "HTTPRoute", "metadata": {"name": "authors"},
      "spec": {"parentRefs": [{"kind": "Server", "name": "authors-http"}],
               "rules": [{"backendRefs": [{"name": "authors", "port": 7000, "filters": [
                   {"type": "ResponseHeaderModifier", "responseHeaderModifier": {"remove": ["server"]}}]}]}]}}),
    ("NetworkAuthentication excepting a single address (upstream reads a bare IP there)",
     {"apiVersion": "policy.linkerd.io/v1alpha1", "kind": "NetworkAuthentication", "metadata": {"name": "net"},
      "spec": {"networks": [{"cidr": "10.0.0.0/8", "except": ["10.9.0.0/16", "10.0.0.1"]}, {"cidr": "fd00::/8"}]}}),
    ("HTTPLocalRateLimitPolicy with overrides",
     {"apiVersion": "policy.linkerd.io/v1alpha1", "kind": "HTTPLocalRateLimitPolicy", "metadata": {"name": "rl"},
      "spec": {"targetRef": {"group": "policy.linkerd.io", "kind": "Server", "name": "s"},
               "identity": {"requestsPerSecond": 20},
               "overrides": [{"requestsPerSecond": 50, "clientRefs": [{"kind": "ServiceAccount", "name": "web"}]}]}}),
    ("ExternalWorkload with IPv4 and IPv6 addresses and a UDP port",
     {"apiVersion": "workload.linkerd.io/v1beta1", "kind": "ExternalWorkload", "metadata": {"name": "vm"},
      "spec": {"meshTLS": {"identity": "vm.demo.serviceaccount.identity.knit.cluster.local",
                           "serverName": "vm.demo.serviceaccount.identity.knit.cluster.local"},
               "workloadIPs": [{"ip": "10.1.0.1"}, {"ip": "fd00::1"}],
               "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]}}),
]

passed = 0


def ok(line):
    global passed
    passed += 1
    print(f"ok   {line}")


def fail(line):
    print(f"FAIL {line}")
    print(f"{passed} passed, 1 failed")
    sys.exit(1)


def rel(path):
    return path.relative_to(ROOT)


# --- 1. the CRD objects --------------------------------------------------------------------


def load_crds():
    files = sorted(CRD_DIR.glob("*.yaml"))
    if not files:
        fail(f"{rel(CRD_DIR)}: no CRD files")
    crds = {}
    for path in files:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        if len(docs) != 1:
            fail(f"{rel(path)}: expected one document, found {len(docs)}")
        crd = docs[0]
        check_crd_object(path, crd)
        key = (crd["spec"]["group"], crd["spec"]["names"]["kind"])
        if key in crds:
            fail(f"{rel(path)}: {key[1]}.{key[0]} is also defined in {rel(crds[key][0])}")
        crds[key] = (path, crd)
    missing = sorted(set(EXPECTED) - set(crds))
    if missing:
        fail(f"{rel(CRD_DIR)}: no CRD for {', '.join(f'{k}.{g}' for g, k in missing)}")
    ok(f"{rel(CRD_DIR)}: {len(crds)} CRDs, one per file, covering every expected kind")
    return crds


def check_crd_object(path, crd):
    name = rel(path)
    if crd.get("apiVersion") != "apiextensions.k8s.io/v1" or crd.get("kind") != "CustomResourceDefinition":
        fail(f"{name}: expected an apiextensions.k8s.io/v1 CustomResourceDefinition, found {crd.get('apiVersion')} {crd.get('kind')}")
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(crd, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            where = ".".join(str(p) for p in e.absolute_path) or "(root)"
            fail(f"{name}: kubernetes-validate {version} --strict: at {where}: {e.message}")
        ok(f"{name}: kubernetes-validate {version} --strict")

    meta, spec = crd["metadata"], crd["spec"]
    group, names = spec["group"], spec["names"]
    key = (group, names["kind"])
    if key not in EXPECTED:
        fail(f"{name}: {names['kind']}.{group} is not a kind Knit ships")
    plural, served, storage, short = EXPECTED[key]
    problems = []
    if meta["name"] != f"{names['plural']}.{group}":
        problems.append(f"metadata.name {meta['name']!r} is not {names['plural']}.{group}")
    if names["plural"] != plural:
        problems.append(f"plural {names['plural']!r}, expected {plural!r}")
    if names.get("singular") != names["kind"].lower():
        problems.append(f"singular {names.get('singular')!r}, expected {names['kind'].lower()!r}")
    if sorted(names.get("shortNames", [])) != sorted(short):
        problems.append(f"shortNames {names.get('shortNames', [])}, expected {short}")
    if spec.get("scope") != "Namespaced":
        problems.append(f"scope {spec.get('scope')!r}, expected Namespaced")
    versions = spec["versions"]
    if [v["name"] for v in versions if v["served"]] != served:
        problems.append(f"served versions {[v['name'] for v in versions if v['served']]}, expected {served}")
    if [v["name"] for v in versions if v["storage"]] != [storage]:
        problems.append(f"storage versions {[v['name'] for v in versions if v['storage']]}, expected [{storage!r}]")
    if meta.get("labels") != {"app.kubernetes.io/part-of": "knit"}:
        problems.append(f"labels {meta.get('labels')}, expected only app.kubernetes.io/part-of: knit")
    if (meta.get("annotations") or {}).get("helm.sh/resource-policy") != "keep":
        problems.append("no annotation helm.sh/resource-policy: keep")
    if problems:
        fail(f"{name}: " + "; ".join(problems))
    ok(f"{name}: {names['kind']}.{group} names, versions {served} (storage {storage}), labels")


# --- 2. structural schemas -----------------------------------------------------------------

JUNCTORS = ("oneOf", "anyOf", "allOf", "not")
# The fields of a JSONSchemaProps, from kubernetes-validate's own copy of the API: a misspelt
# keyword (minLenght) is not caught by validating the CRD, whose schema nodes are free-form there.
SCHEMA_KEYWORDS = set(json.loads(
    (importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema"
     / f"v{K8S_VERSIONS[0]}-local-strict" / "jsonschemaprops-apiextensions-v1.json").read_text()
)["properties"])
# Keywords the API server refuses in a CRD schema although JSONSchemaProps has them.
NOT_IN_CRD = {"$ref", "definitions", "dependencies", "id", "patternProperties", "additionalItems"}
# What a junctor's branches may not say (they only constrain; the outer schema says the shape).
NOT_IN_JUNCTOR = {"type", "description", "default", "additionalProperties", "nullable"}


def walk(node, at, problems, in_junctor=False):
    """Appends to `problems` every way `node` (at path `at`) is not a structural schema node."""
    if not isinstance(node, dict):
        problems.append(f"{at}: not a schema object")
        return
    keys = set(node)
    unknown = sorted(keys - SCHEMA_KEYWORDS)
    if unknown:
        problems.append(f"{at}: unknown keyword {', '.join(unknown)}")
    refused = sorted(keys & NOT_IN_CRD) + (["uniqueItems: true"] if node.get("uniqueItems") else [])
    if refused:
        problems.append(f"{at}: {', '.join(refused)} is not allowed in a CRD schema")
    if in_junctor:
        banned = sorted(k for k in keys if k in NOT_IN_JUNCTOR or k.startswith("x-kubernetes-"))
        if banned:
            problems.append(f"{at}: {', '.join(banned)} inside a logical junctor")
    else:
        int_or_string = node.get("x-kubernetes-int-or-string") is True
        preserve = node.get("x-kubernetes-preserve-unknown-fields") is True
        kind = node.get("type")
        if kind is None and not (int_or_string or preserve):
            problems.append(f"{at}: no type")
        if int_or_string and kind is not None:
            problems.append(f"{at}: int-or-string with a type ({kind})")
        if kind == "object":
            if "properties" in node and "additionalProperties" in node:
                problems.append(f"{at}: both properties and additionalProperties")
            if not ({"properties", "additionalProperties"} & keys or preserve):
                problems.append(f"{at}: object with neither properties, additionalProperties nor preserve-unknown-fields")
            for req in node.get("required", []):
                if "properties" in node and req not in node["properties"]:
                    problems.append(f"{at}: required field {req!r} is not among its properties")
        if kind == "array" and "items" not in node:
            problems.append(f"{at}: array without items")
        if node.get("x-kubernetes-list-type") == "map":
            item = node.get("items", {})
            for k in node.get("x-kubernetes-list-map-keys", []):
                if k not in item.get("required", []) and "default" not in item.get("properties", {}).get(k, {}):
                    problems.append(f"{at}: list-map key {k!r} is neither required nor defaulted")
        if "default" in node:
            try:
                validator(to_jsonschema(node)).validate(node["default"])
            except jsonschema.ValidationError as e:
                problems.append(f"{at}: default {node['default']!r} does not satisfy its schema: {e.message}")
    for name, child in node.get("properties", {}).items():
        walk(child, f"{at}.{name}", problems, in_junctor)
    if isinstance(node.get("additionalProperties"), dict):
        walk(node["additionalProperties"], f"{at}.*", problems, in_junctor)
    if "items" in node:
        walk(node["items"], f"{at}[]", problems, in_junctor)
    for j in JUNCTORS:
        branches = node.get(j)
        if branches is None:
            continue
        for i, branch in enumerate(branches if isinstance(branches, list) else [branches]):
            walk(branch, f"{at}.{j}[{i}]", problems, in_junctor=True)
            for name in [*branch.get("properties", {}), *branch.get("required", [])]:
                if name not in node.get("properties", {}):
                    problems.append(f"{at}.{j}[{i}]: field {name!r} is not among the outer schema's properties")


def resolve(schema, json_path):
    """The schema node at a printer column's simple JSONPath (.spec.a.b), or None."""
    node = schema
    for part in json_path.strip(".").split("."):
        node = node.get("properties", {}).get(part)
        if node is None:
            return None
    return node


def check_structural(crds):
    for (group, kind), (path, crd) in sorted(crds.items()):
        for v in crd["spec"]["versions"]:
            schema = v["schema"]["openAPIV3Schema"]
            problems = []
            if schema.get("type") != "object":
                problems.append("openAPIV3Schema: the root is not type: object")
            walk(schema, "openAPIV3Schema", problems)
            for col in v.get("additionalPrinterColumns", []):
                jp = col["jsonPath"]
                if not jp.startswith(".metadata.") and resolve(schema, jp) is None:
                    problems.append(f"printer column {col['name']!r}: {jp} is not in the schema")
            if problems:
                fail(f"{rel(path)}: {v['name']}: " + "; ".join(problems))
            ok(f"{rel(path)}: {v['name']}: structural schema")


# --- 3. documents against the schemas ------------------------------------------------------


def to_jsonschema(node, root=False):
    """The openAPIV3Schema as a JSON Schema that also refuses unknown fields (which the API server
    would prune), with int-or-string spelled as anyOf."""
    if isinstance(node, list):
        return [to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for k, v in node.items():
        if k in ("properties",):
            out[k] = {name: to_jsonschema(child) for name, child in v.items()}
        elif k in ("items", "additionalProperties", "not"):
            out[k] = to_jsonschema(v)
        elif k in ("oneOf", "anyOf", "allOf"):
            out[k] = to_jsonschema(v)
        elif k.startswith("x-kubernetes-"):
            continue
        else:
            out[k] = v
    if node.get("x-kubernetes-int-or-string"):
        out.setdefault("allOf", []).append({"anyOf": [{"type": "integer"}, {"type": "string"}]})
    if node.get("type") == "object" and "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if root:
        out["properties"] = {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object", "required": ["name"],
                         "properties": {"name": {"type": "string", "minLength": 1}}},
            **out.get("properties", {}),
        }
        out.setdefault("required", [])
        out["required"] = ["apiVersion", "kind", "metadata", *out["required"]]
    return out


def validator(schema):
    return jsonschema.Draft202012Validator(schema)


def schemas_by_version(crds):
    out = {}
    for (group, kind), (path, crd) in crds.items():
        for v in crd["spec"]["versions"]:
            if v["served"]:
                js = to_jsonschema(v["schema"]["openAPIV3Schema"], root=True)
                jsonschema.Draft202012Validator.check_schema(js)
                # Metadata is checked by the API server, not the CRD: let its other fields through.
                js["properties"]["metadata"]["additionalProperties"] = True
                out[(f"{group}/{v['name']}", kind)] = validator(js)
    return out


def errors(schemas, doc):
    """`None` if `doc` is not ours to check, else the list of its validation errors."""
    api_version, kind = doc.get("apiVersion", ""), doc.get("kind", "")
    group = api_version.rsplit("/", 1)[0] if "/" in api_version else ""
    if group in FOREIGN_GROUPS or group not in {g for g, _ in EXPECTED}:
        return None
    v = schemas.get((api_version, kind))
    if v is None:
        return [f"{api_version} {kind} is not served by Knit's CRDs"]
    found = sorted(v.iter_errors(doc), key=lambda e: list(e.absolute_path))
    return [f"{'.'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}" for e in found]


def label(doc):
    meta = doc.get("metadata") or {}
    return f"{doc.get('kind')} {meta.get('namespace', 'default')}/{meta.get('name', '?')}"


def check_manifests(schemas):
    files = sorted(p for g in MANIFEST_GLOBS for p in ROOT.glob(g))
    if not files:
        fail(f"no manifests found under {', '.join(MANIFEST_GLOBS)}")
    checked = 0
    for path in files:
        for n, doc in enumerate(yaml.safe_load_all(path.read_text()), start=1):
            if doc is None:
                continue
            errs = errors(schemas, doc)
            if errs is None:
                print(f"skip {rel(path)}: document {n} ({label(doc)}): {doc.get('apiVersion')} {doc.get('kind')} is not one of Knit's CRDs")
                continue
            if errs:
                fail(f"{rel(path)}: document {n} ({label(doc)}): {'; '.join(errs)}")
            checked += 1
            ok(f"{rel(path)}: document {n} ({label(doc)}) matches {doc['apiVersion']}")
    if checked == 0:
        fail("none of Knit's manifests holds a custom resource of Knit's CRDs")


def check_examples(schemas):
    me = Path(__file__).name
    for i, (what, doc) in enumerate(GOOD_DOCUMENTS, start=1):
        errs = errors(schemas, copy.deepcopy(doc))
        if errs:
            fail(f"{me}: GOOD_DOCUMENTS[{i}] ({what}) was refused: {'; '.join(errs)}")
        ok(f"accepted: {what}")
    for i, (what, doc, word) in enumerate(BAD_DOCUMENTS, start=1):
        errs = errors(schemas, copy.deepcopy(doc))
        if not errs:
            fail(f"{me}: BAD_DOCUMENTS[{i}] ({what}) was accepted")
        if not any(re.search(re.escape(word), e) for e in errs):
            fail(f"{me}: BAD_DOCUMENTS[{i}] ({what}) was refused for another reason: {'; '.join(errs)}")
        ok(f"refused: {what}: {errs[0]}")


def main():
    crds = load_crds()
    check_structural(crds)
    schemas = schemas_by_version(crds)
    check_manifests(schemas)
    check_examples(schemas)
    print(f"{passed} passed, 0 failed")


if __name__ == "__main__":
    main()

"""deploy/helm/cht-rapidpro-worker, checked offline: no cluster, no helm binary.

The chart is linted (strict) and rendered with Helm's own Go code, which helm-python-sdk ships
in its wheel (libhelm_c, Helm v4's SDK behind a C ABI), for the default values and for
examples/values-ha.yaml; every manifest is validated strictly (no unknown field) against
Kubernetes' OpenAPI schemas, which kubernetes-validate ships, for the oldest Kubernetes the
chart allows and the newest it knows; values.schema.json is checked as a JSON Schema with
jsonschema. The chart is also held to the other deployments: the systemd unit's MemoryMax= and
TimeoutStopSec=, the compose file's confinement, the image's user and ports, the webhook's paths.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

helm = pytest.importorskip("helm_python", reason="pip install -e '.[test]' (helm-python-sdk renders)")
kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install -e '.[test]'")
jsonschema = pytest.importorskip("jsonschema", reason="pip install -e '.[test]'")

from transitions.incoming.record import V1_PATH, V2_PATH  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "cht-rapidpro-worker"
HA_VALUES = CHART / "examples" / "values-ha.yaml"
# The oldest Kubernetes Chart.yaml's kubeVersion allows, and the newest kubernetes-validate knows.
KUBE_VERSIONS = ("1.25.0", kubernetes_validate.latest_version())
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}  # not in Kubernetes' own schemas


def default_values() -> dict[str, Any]:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def ha_values() -> dict[str, Any]:
    return yaml.safe_load(HA_VALUES.read_text())


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The manifests `helm template` would print for `values` (merged over values.yaml)."""
    with helm.Chart.load(str(CHART)) as chart:
        rendered = chart.render(values or {}, name="rapidpro-worker", namespace="cht", is_install=True)
    docs = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs += [doc for doc in yaml.safe_load_all(text) if doc]
    return docs


def one(docs: list[dict[str, Any]], kind: str, name_suffix: str = "") -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, [(d["kind"], d["metadata"]["name"]) for d in docs]
    return found[0]


def kinds(docs: list[dict[str, Any]]) -> list[str]:
    return sorted(d["kind"] for d in docs)


VALUES_FILES = {"default": default_values, "ha": ha_values}


# ---------------------------------------------------------------------------- lint, render, validate
@pytest.mark.parametrize("which", VALUES_FILES)
def test_the_chart_lints_clean_in_strict_mode(which):
    for version in KUBE_VERSIONS:
        report = helm.lint(str(CHART), VALUES_FILES[which](), strict=True, kube_version=f"v{version}")
        assert report["errors"] == [] and report["messages"] == [], (version, report)


@pytest.mark.parametrize("which", VALUES_FILES)
def test_every_manifest_is_valid_kubernetes(which):
    docs = render(VALUES_FILES[which]())
    assert {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget"} <= set(kinds(docs))
    checked = 0
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CRDS:
            continue
        for version in KUBE_VERSIONS:
            # strict: a field Kubernetes does not know (a typo, a wrong indentation) is an error
            kubernetes_validate.validate(doc, version, strict=True)
            checked += 1
    assert checked >= 2 * 5


def test_the_ha_example_renders_what_it_promises():
    docs = render(ha_values())
    assert kinds(docs) == ["ConfigMap", "Deployment", "Ingress", "PodDisruptionBudget", "Service", "Service",
                           "ServiceMonitor"]
    spec = one(docs, "Deployment")["spec"]
    assert spec["replicas"] == 3
    spread = spec["template"]["spec"]["topologySpreadConstraints"]
    assert {c["topologyKey"]: c["whenUnsatisfiable"] for c in spread} == {
        "kubernetes.io/hostname": "DoNotSchedule", "topology.kubernetes.io/zone": "ScheduleAnyway"}
    # The operator's own RapidPro Secret: none generated, the pods read the named one.
    assert "Secret" not in kinds(docs)
    sources = spec["template"]["spec"]["volumes"][0]["projected"]["sources"]
    assert [s["secret"]["name"] for s in sources] == ["cht-couchdb-credentials", "rapidpro-worker-rapidpro"]
    # The ServiceMonitor (a CRD: not in Kubernetes' schemas) scrapes the metrics Service's port.
    monitor = one(docs, "ServiceMonitor")
    metrics = one(docs, "Service", "-metrics")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    selected = monitor["spec"]["selector"]["matchLabels"]
    assert selected.items() <= metrics["metadata"]["labels"].items()
    assert not selected.items() <= one(docs, "Service", "rapidpro-worker")["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == [p["name"] for p in metrics["spec"]["ports"]]
    assert {"interval", "path"} <= monitor["spec"]["endpoints"][0].keys()
    # The Ingress reaches the webhook's two paths only, and gives RapidPro its public URL.
    ingress = one(docs, "Ingress")
    paths = [p["path"] for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]]
    assert sorted(paths) == sorted([V1_PATH, V2_PATH])
    config = one(docs, "ConfigMap")["data"]
    assert config["WEBHOOK_PUBLIC_URL"] == "https://rapidpro-worker.cht.example.org"
    assert config["OUTGOING_SERVICE_NAME"] == "rapidpro-worker"


# ---------------------------------------------------------------------------- held to the other deployments
def _unit() -> dict[str, str]:
    text = (ROOT / "systemd" / "cht-rapidpro-worker.service").read_text()
    return dict(re.findall(r"^(\w+)=(.*)$", text, flags=re.MULTILINE))


def test_replicas_probes_resources_and_confinement_match_the_other_deployments():
    docs = render()
    deployment = one(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert ports == {"metrics": 5989, "webhook": 5990} and "EXPOSE 5989 5990" in dockerfile
    # Two replicas, one sending (the CouchDB lease); a disruption takes one at a time.
    assert deployment["spec"]["replicas"] == 2
    assert one(docs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    assert pod["topologySpreadConstraints"][0]["topologyKey"] == "kubernetes.io/hostname"
    # Readiness: the public door's /readyz (CouchDB and the settings, not the lease: standbys
    # serve the webhook). Liveness: /livez, the watchdog's signal, within WatchdogSec.
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "webhook"}
    for probe in ("livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"] == {"path": "/livez", "port": "metrics"}
    unit = _unit()
    watchdog = int(unit["WatchdogSec"].removesuffix("s"))
    live = container["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] <= watchdog
    start = container["startupProbe"]
    start_limit = 60 * int(unit["TimeoutStartSec"].removesuffix("min"))
    assert start["periodSeconds"] * start["failureThreshold"] == start_limit
    assert pod["terminationGracePeriodSeconds"] == int(unit["TimeoutStopSec"])
    # MemoryMax=512M in the unit, mem_limit 512m in the compose file.
    assert unit["MemoryMax"] == "512M" and container["resources"]["limits"]["memory"] == "512Mi"
    # As the compose file: read-only root, no capabilities, no new privileges; the image's user.
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]} and security["runAsNonRoot"] is True
    assert "USER 10001:10001" in dockerfile and pod["securityContext"]["runAsUser"] == 10001
    assert pod["automountServiceAccountToken"] is False
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/run/secrets", "/tmp"}
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert (annotations["prometheus.io/scrape"], annotations["prometheus.io/port"]) == ("true", "5989")


def test_secrets_come_from_chts_chart_and_a_generated_incoming_key():
    docs = render()
    sources = one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"][0]["projected"]["sources"]
    couch, rapidpro = (s["secret"] for s in sources)
    assert couch == {"name": "cht-couchdb-credentials", "items": [{"key": "COUCH_URL", "path": "couch-url"}]}
    secret = one(docs, "Secret")
    assert rapidpro["name"] == secret["metadata"]["name"]
    # No token given: none mounted (the vault's may serve); a key generated for the webhook.
    assert rapidpro["items"] == [{"key": "rapidpro-incoming-key", "path": "rapidpro-incoming-key"}]
    assert set(secret["data"]) == {"rapidpro-incoming-key"}
    assert len(secret["data"]["rapidpro-incoming-key"]) > 40
    given = render({"rapidpro": {"apiToken": "tok", "incomingKey": "key"}})
    data = one(given, "Secret")["data"]
    assert data == {"rapidpro-token": "dG9r", "rapidpro-incoming-key": "a2V5"}
    one_replica = render({"replicaCount": 1})
    assert "PodDisruptionBudget" not in kinds(one_replica)  # it would block every node drain


# ---------------------------------------------------------------------------- values.schema.json
def test_the_values_schema_is_a_valid_schema_and_accepts_both_values_files():
    schema = json.loads((CHART / "values.schema.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    jsonschema.Draft7Validator.check_schema(schema)
    for which, values in VALUES_FILES.items():
        merged = _merge(default_values(), values())
        assert [e.message for e in validator.iter_errors(merged)] == [], which


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in over.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(
            merged.get(key), dict) else value
    return merged


PLANTED = [
    ("replicas as a string", {"replicaCount": "2"}, "/replicaCount", "want integer"),
    ("no CouchDB secret name", {"couchdb": {"existingSecret": ""}}, "/couchdb/existingSecret", "minLength"),
    ("a secret in env", {"env": {"RAPIDPRO_API_TOKEN": "x"}}, "RAPIDPRO_API_TOKEN", "propertyName"),
    ("a typo'd key", {"replicas": 2}, "replicas", "additional properties"),
    ("no memory limit", {"resources": {"limits": {"memory": None}}}, "/resources/limits", "'memory'"),
]


@pytest.mark.parametrize(("fault", "values", "where", "why"), PLANTED, ids=[p[0] for p in PLANTED])
def test_a_planted_mistake_fails_with_a_clear_message(fault, values, where, why):
    with pytest.raises(helm.HelmValuesError) as raised:
        render(values)
    message = str(raised.value)
    assert where in message and why in message, message
    schema = json.loads((CHART / "values.schema.json").read_text())
    errors = list(jsonschema.Draft7Validator(schema).iter_errors(_merge(default_values(), values)))
    assert errors, fault

"""Offline checks of the lorasweep Helm chart; run by scripts/check-helm.sh in its venv.

Helm itself comes from helm-python-sdk (Helm's Go SDK in a shared library, bound with ctypes),
the Kubernetes OpenAPI schemas from kubernetes-validate: neither needs a network or a cluster.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

import helm_python as helm
import jsonschema
import kubernetes_validate
import yaml

HERE = Path(__file__).resolve().parent
CHART = HERE.parent / "lorasweep"
RELEASE, NAMESPACE = "lorasweep", "sweeps"
KUBE_VERSIONS = ["1.29.0", "1.30.0", "1.31.0", "1.32.0", "1.33.0"]

failures: list[str] = []


def check(name: str, fn: Callable[[], str | None]) -> None:
    """Runs one check; a raised exception (AssertionError included) is its failure."""
    try:
        detail = fn()
    except Exception as exc:  # noqa: BLE001 - every failure is reported, not just the first
        msg = str(exc).strip().replace("\n", "\n       ")
        failures.append(name)
        print(f"FAIL {name}: {type(exc).__name__}: {msg}")
    else:
        print(f"ok   {name}" + (f" ({detail})" if detail else ""))


def values(name: str) -> dict[str, Any]:
    return helm.values_from_yaml((HERE / name).read_text())


def render(vals: dict[str, Any]) -> dict[str, str]:
    with helm.Chart.load(CHART) as chart:
        return chart.render(vals, name=RELEASE, namespace=NAMESPACE, is_install=True)


def objects(manifests: dict[str, str]) -> list[dict[str, Any]]:
    docs = []
    for path, text in manifests.items():
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def find(docs: list[dict[str, Any]], kind: str, component: str | None = None) -> dict[str, Any]:
    for d in docs:
        labels = d["metadata"].get("labels", {})
        if d["kind"] == kind and (component is None or labels.get("app.kubernetes.io/component") == component):
            return d
    raise AssertionError(f"no {kind} {component or ''} rendered; got {[d['kind'] for d in docs]}")


def container(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]["containers"][0]


def env(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def expect_render_failure(vals: dict[str, Any], *needles: str) -> Callable[[], str]:
    def run() -> str:
        try:
            render(vals)
        except helm.HelmError as exc:
            text = str(exc)
            missing = [n for n in needles if n not in text]
            assert not missing, f"failed, but the message lacks {missing}: {text}"
            last = text.strip().splitlines()[-1].strip()
            return last.split("): ", 1)[-1][:100]  # without "execution error at (file:line:col)"
        raise AssertionError("rendered, but should have been refused")

    return run


# --- the schema itself -----------------------------------------------------------------------

def schema_is_closed() -> str:
    schema = yaml.safe_load((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    open_objects = []

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            if "properties" in node and node.get("additionalProperties") is not False:
                open_objects.append(where or "/")
            for key, sub in node.get("properties", {}).items():
                walk(sub, f"{where}/{key}")
            walk(node.get("items"), f"{where}[]")

    walk(schema, "")
    assert not open_objects, f"objects without additionalProperties: false: {open_objects}"
    # Every default in values.yaml must be described by the schema (and so pass it).
    jsonschema.Draft7Validator(schema).validate(yaml.safe_load((CHART / "values.yaml").read_text()))
    return "draft-07, closed at every level, values.yaml conforms"


# --- lint ------------------------------------------------------------------------------------

def lint(vals: dict[str, Any]) -> Callable[[], str]:
    def run() -> str:
        # Strict: warnings fail too. Per version, because lint flags APIs deprecated by then.
        problems, infos = [], set()
        for version in KUBE_VERSIONS:
            report = helm.lint(CHART, vals, strict=True, kube_version=f"v{version}")
            problems += [f"{version} {m['path']}: {m['error']}" for m in report["messages"] if m["severity"] >= 2]
            problems += [f"{version} {e}" for e in report.get("errors") or []]
            infos |= {m["error"] for m in report["messages"] if m["severity"] < 2}
        assert not problems, "\n".join(problems)
        return f"strict, {len(KUBE_VERSIONS)} versions; info: {'; '.join(sorted(infos)) or 'none'}"

    return run


# --- Kubernetes schemas ----------------------------------------------------------------------

def kube_valid(docs: list[dict[str, Any]]) -> Callable[[], str]:
    def run() -> str:
        errors = []
        for version in KUBE_VERSIONS:
            for d in docs:
                try:
                    kubernetes_validate.validate(d, version, strict=True)
                except kubernetes_validate.ValidationError as exc:
                    path = "/".join(str(p) for p in exc.absolute_path)
                    errors.append(f"{version} {d['kind']}/{d['metadata']['name']} at /{path}: {exc.message}")
        assert not errors, "\n".join(errors)
        return f"{len(docs)} objects × {len(KUBE_VERSIONS)} versions, strict"

    return run


def validator_is_strict(docs: list[dict[str, Any]]) -> str:
    """The schema check is only worth something if it rejects what the API server would drop."""
    import copy

    sts = copy.deepcopy(find(docs, "StatefulSet", "coordinator"))
    container(sts)["livenesProbe"] = {"grpc": {"port": 50052}}
    try:
        kubernetes_validate.validate(sts, KUBE_VERSIONS[0], strict=True)
    except kubernetes_validate.ValidationError as exc:
        assert "livenesProbe" in exc.message, exc.message
        return "a misspelled livenesProbe is rejected"
    raise AssertionError("a container with an unknown field passed validation")


# --- facts of the output ---------------------------------------------------------------------

def default_facts(docs: list[dict[str, Any]]) -> Callable[[], str]:
    def run() -> str:
        sts = find(docs, "StatefulSet", "coordinator")
        assert sts["spec"]["replicas"] == 1, sts["spec"]["replicas"]
        claim = sts["spec"]["volumeClaimTemplates"][0]["spec"]
        assert claim["accessModes"] == ["ReadWriteOnce"], claim
        coord = container(sts)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert coord[probe]["grpc"]["port"] == 50052, (probe, coord[probe])
        e = env(coord)
        assert e["LORASWEEP_LISTEN"] == "0.0.0.0:50051" and e["LORASWEEP_DATA_DIR"] == "/data", e
        assert e["LORASWEEP_HEALTH_LISTEN"] == "0.0.0.0:50052", e
        assert e["LORASWEEP_LEASE_TTL"] == "60s", e
        assert "LORASWEEP_TLS_CERT" not in e, e
        sc = coord["securityContext"]
        assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"], sc
        assert sc["capabilities"]["drop"] == ["ALL"], sc
        pod = sts["spec"]["template"]["spec"]["securityContext"]
        assert pod["runAsNonRoot"] and pod["runAsUser"] == pod["fsGroup"] == 10001, pod

        svc = find(docs, "Service", "coordinator")
        assert svc["metadata"]["name"] == f"{RELEASE}-coordinator", svc["metadata"]["name"]
        assert sorted(p["port"] for p in svc["spec"]["ports"]) == [9090, 50051, 50052], svc["spec"]["ports"]

        dep = find(docs, "Deployment", "worker")
        assert dep["spec"]["replicas"] == 2, dep["spec"]["replicas"]
        spec = dep["spec"]["template"]["spec"]
        w = container(dep)
        assert w["resources"]["limits"]["nvidia.com/gpu"] == 1, w["resources"]
        assert w["image"] == "lorasweep-worker:dev-cuda", w["image"]
        assert coord["image"] == "lorasweep-coordinator:dev", coord["image"]
        assert spec["terminationGracePeriodSeconds"] == 90, spec
        assert w["livenessProbe"]["httpGet"]["path"] == "/healthz", w["livenessProbe"]
        we = env(w)
        assert we["LORASWEEP_COORDINATOR"] == f"http://{RELEASE}-coordinator:50051", we
        assert we["LORASWEEP_DEVICE"] == "cuda" and we["HF_HOME"] == "/cache/huggingface", we
        assert we["LORASWEEP_SHUTDOWN_GRACE"] == "60s", we
        token_items = [v for v in spec["volumes"] if v["name"] == "tokens"][0]["secret"]["items"]
        assert [i["key"] for i in token_items] == ["worker-token"], token_items
        assert not [d for d in docs if d["kind"] == "Job"], "a Job rendered by default"
        return "1 coordinator, grpc probes on 50052, 2 GPU workers, grace 90s"

    return run


def full_facts(docs: list[dict[str, Any]]) -> Callable[[], str]:
    def run() -> str:
        assert not [d for d in docs if d["kind"] in ("Secret", "Deployment")], [d["kind"] for d in docs]
        sts = find(docs, "StatefulSet", "coordinator")
        ce = env(container(sts))
        assert ce["LORASWEEP_TLS_CERT"] == "/etc/lorasweep/tls/tls.crt", ce
        assert ce["LORASWEEP_COORDINATOR"] == "https://sweep-coordinator:50051", ce
        assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"] == "local-path"
        job = find(docs, "Job", "worker")
        js = job["spec"]
        assert js["completionMode"] == "Indexed" and js["completions"] == js["parallelism"] == 4, js
        assert js["backoffLimit"] == 10, js
        rules = js["podFailurePolicy"]["rules"]
        assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]} in rules, rules
        assert rules[0]["onExitCodes"]["values"] == [3], rules
        spec = js["template"]["spec"]
        assert spec["restartPolicy"] == "Never", spec
        assert spec["terminationGracePeriodSeconds"] == 120, spec
        w = container(job)
        assert "nvidia.com/gpu" not in w["resources"].get("limits", {}), w["resources"]
        assert w["args"] == ["--synthetic-step-ms", "3", "--max-backoff-ms", "5000"], w.get("args")
        we = env(w)
        assert we["LORASWEEP_COORDINATOR"] == "https://sweep-coordinator:50051", we
        assert we["LORASWEEP_TLS_CA"] == "/etc/lorasweep/ca/ca.crt" and we["LORASWEEP_DEVICE"] == "cpu", we
        assert we["LORASWEEP_EXIT_WHEN_IDLE"] == "5m", we
        vols = {v["name"]: v for v in spec["volumes"]}
        assert vols["hf-cache"]["persistentVolumeClaim"] == {"claimName": "hf-cache", "readOnly": True}, vols
        assert vols["tokens"]["secret"]["secretName"] == "lorasweep-tokens", vols
        assert vols["tls-ca"]["configMap"]["name"] == "lorasweep-ca", vols
        assert spec["nodeSelector"] == {"kubernetes.io/arch": "amd64"}, spec
        assert "prometheus.io/scrape" not in job["spec"]["template"]["metadata"].get("annotations", {})
        return "TLS, Indexed Job ×4, CPU without GPUs, existing Secret and cache claim"

    return run


def main() -> int:
    print(f"helm SDK {helm.helm_sdk_version()} (helm-python-sdk {helm.__version__}), "
          f"kubernetes-validate {kubernetes_validate.__version__}")
    default_vals, full_vals = values("values-default.yaml"), values("values-full.yaml")

    check("schema: values.schema.json", schema_is_closed)
    check("lint: default values", lint(default_vals))
    check("lint: values-full.yaml", lint(full_vals))

    rendered: dict[str, list[dict[str, Any]]] = {}
    for label, vals in (("default", default_vals), ("full", full_vals)):
        def do(vals: dict[str, Any] = vals, label: str = label) -> str:
            rendered[label] = objects(render(vals))
            return ", ".join(f"{d['kind']}/{d['metadata']['name']}" for d in rendered[label])
        check(f"render: {label} values", do)

    if "default" in rendered:
        check("kubernetes schemas: strict mode self-test", lambda: validator_is_strict(rendered["default"]))
    for label, facts in (("default", default_facts), ("full", full_facts)):
        if label in rendered:
            check(f"kubernetes schemas: {label}", kube_valid(rendered[label]))
            check(f"facts: {label}", facts(rendered[label]))

    check("refused: values-typo.yaml (worker.replcas)",
          expect_render_failure(values("values-typo.yaml"), "replcas", "additional properties"))
    tokens = default_vals["tokens"]
    check("refused: no tokens and no existingSecret", expect_render_failure({}, "tokens.existingSecret"))
    check("refused: a token under 16 characters",
          expect_render_failure({"tokens": {**tokens, "admin": "short"}}, "/tokens/admin", "minLength"))
    check("refused: the same token for both roles",
          expect_render_failure({"tokens": {**tokens, "worker": tokens["admin"]}}, "must differ"))
    check("refused: terminationGracePeriodSeconds <= shutdownGrace",
          expect_render_failure({"tokens": tokens, "worker": {"shutdownGrace": "1m30s",
                                                             "terminationGracePeriodSeconds": 90}},
                                "must exceed worker.shutdownGrace"))
    check("refused: tls.enabled without tls.existingSecret",
          expect_render_failure({"tokens": tokens, "tls": {"enabled": True}}, "tls.existingSecret"))
    check("refused: worker.kind not Deployment or Job",
          expect_render_failure({"tokens": tokens, "worker": {"kind": "DaemonSet"}}, "/worker/kind"))

    if failures:
        print(f"check-helm: {len(failures)} check(s) failed: {', '.join(failures)}", file=sys.stderr)
        return 1
    print("check-helm: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

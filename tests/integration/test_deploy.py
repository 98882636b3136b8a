"""The Kustomize deployment in ``deploy/``: every overlay renders, validates and keeps its promises.

Each of ``deploy/base`` (the native sidecar), ``deploy/overlays/shared-redis`` and
``deploy/overlays/gateway`` is rendered with the real ``kubectl kustomize``. The built-in kinds are
validated with ``kubernetes-validate --strict`` against Kubernetes 1.29 (the first with native
sidecars on by default) and the newest version the package knows; the Prometheus Operator's
PodMonitor and PrometheusRule against the operator's published CRD schemas, as pydantic models
(PyPI ``cloudcoil-models-prometheus-operator``), and the gateway's cert-manager Certificate
likewise against cert-manager's CRD schema (PyPI ``cloudcoil-models-cert-manager``). The rest
pins what the issue asks of the manifests: native sidecar, probes, security context, the shared
store for every replica, the gateway's NetworkPolicy, its HTTPS from a mounted Secret, its
rollouts (surge first, a disruption budget, a preStop delay inside the grace period), and a proxy
config that the proxy itself accepts.
"""

from __future__ import annotations

import ast
import functools
import json
import posixpath
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml
from kubernetes_validate.utils import latest_version

from proxy.config import Settings, parse_settings
from tests.tlsfiles import SecretDir, issue

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BASE = "base"
SHARED_REDIS = "overlays/shared-redis"
GATEWAY = "overlays/gateway"
OVERLAYS = (BASE, SHARED_REDIS, GATEWAY)
# 1.29: native sidecars (init containers with restartPolicy Always) are on by default.
K8S_VERSIONS = ("1.29.0", latest_version())
CUSTOM_KINDS = frozenset({"PodMonitor", "PrometheusRule", "Certificate"})
OPERATOR_KINDS = ("PodMonitor", "PrometheusRule")
PROXY_IMAGE = "defender-proxy"
REDIS_STORE = "redis://defender-proxy-redis:6379/0"
CLIENT_LABEL = {"defender-proxy/client": "true"}
#: The Issuer the gateway's Certificate names; the operator provides it (README, the overlay).
ISSUER = "defender-proxy-issuer"
JOB_LABEL = "defender-proxy/job"
DOCKERFILE = ROOT / "Dockerfile"
#: Seconds a gateway pod keeps beyond its preStop delay and shutdown_grace: the exit itself.
TERMINATION_ROOM = 5

Doc = dict[str, Any]


@functools.cache
def _render(overlay: str) -> tuple[Doc, ...]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is required to render deploy/ (it has kustomize built in); install it")
    result = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY / overlay)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"kubectl kustomize deploy/{overlay} failed:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def _docs(overlay: str, kind: str | None = None) -> list[Doc]:
    return [doc for doc in _render(overlay) if kind is None or doc["kind"] == kind]


def _one(overlay: str, kind: str, name: str) -> Doc:
    found = [doc for doc in _docs(overlay, kind) if doc["metadata"]["name"] == name]
    assert len(found) == 1, f"deploy/{overlay}: expected one {kind} {name}, found {len(found)}"
    return found[0]


def _workloads(overlay: str) -> list[Doc]:
    return [doc for doc in _render(overlay) if doc["kind"] in ("Deployment", "StatefulSet")]


def _containers(pod: Doc) -> Iterator[Doc]:
    yield from pod.get("initContainers") or ()
    yield from pod["containers"]


def _is_proxy(container: Doc) -> bool:
    return str(container["image"]).rsplit("/", 1)[-1].split(":")[0] == PROXY_IMAGE


def _proxies(overlay: str) -> list[tuple[Doc, Doc]]:
    """Every (workload, container) pair that runs the proxy."""
    return [
        (workload, container)
        for workload in _workloads(overlay)
        for container in _containers(workload["spec"]["template"]["spec"])
        if _is_proxy(container)
    ]


def _volume(pod: Doc, container: Doc, path: str) -> tuple[Doc, Doc]:
    """The (mount, volume) of ``container`` that holds the file at ``path``."""
    directory = posixpath.dirname(path)
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == directory)
    return mount, next(v for v in pod["volumes"] if v["name"] == mount["name"])


def _config(overlay: str, workload: Doc, container: Doc) -> tuple[Doc, dict[str, str]]:
    """The config document this proxy container reads, and its environment."""
    pod = workload["spec"]["template"]["spec"]
    env = {item["name"]: item["value"] for item in container.get("env", ()) if "value" in item}
    path = env.get("DEFENDER_PROXY_CONFIG")
    assert path, f"deploy/{overlay}: {container['name']} has no DEFENDER_PROXY_CONFIG"
    _, volume = _volume(pod, container, path)
    config_map = _one(overlay, "ConfigMap", volume["configMap"]["name"])
    data: Doc = yaml.safe_load(config_map["data"][posixpath.basename(path)])
    return data, env


@pytest.fixture(scope="module")
def secret_files(tmp_path_factory: pytest.TempPathFactory) -> SecretDir:
    """A Secret-volume directory with a pair, to stand in for one mounted in a pod."""
    secret = SecretDir(tmp_path_factory.mktemp("secret"))
    secret.put(issue(trustme.CA()))
    return secret


def _settings(overlay: str, workload: Doc, container: Doc, secret: SecretDir) -> Settings:
    """The settings this proxy container starts with: its mounted config file and its env.

    ``listen_tls`` names files of a mounted Secret that exists only in the cluster: each must be
    in one of the container's Secret volumes, and a pair in ``secret`` stands in for it."""
    data, env = _config(overlay, workload, container)
    if "listen_tls" in data:
        pod = workload["spec"]["template"]["spec"]
        for key, path in data["listen_tls"].items():
            _, volume = _volume(pod, container, path)
            assert "secret" in volume, f"deploy/{overlay}: listen_tls.{key} is not in a Secret"
        data["listen_tls"] = {"cert": secret.files.cert, "key": secret.files.key}
    return parse_settings(data, f"deploy/{overlay}: {env['DEFENDER_PROXY_CONFIG']}", environ=env)


def _port(container: Doc, name: str) -> int:
    return int(next(p["containerPort"] for p in container.get("ports", ()) if p["name"] == name))


def _selects(selector: Doc, labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, "only matchLabels selectors are checked here"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kustomize_renders_every_overlay(overlay: str) -> None:
    """kubectl kustomize renders the overlay with the proxy, its config, PodMonitor and rules."""
    kinds = {doc["kind"] for doc in _render(overlay)}
    assert {"ConfigMap", "Deployment", "PodMonitor", "PrometheusRule"} <= kinds
    assert _proxies(overlay), f"deploy/{overlay} runs no defender-proxy container"


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_builtin_kinds_pass_kubernetes_validate_strict(
    overlay: str, version: str, tmp_path: Path
) -> None:
    """kubernetes-validate --strict accepts every built-in resource, for 1.29 and the newest."""
    builtin = [doc for doc in _render(overlay) if doc["kind"] not in CUSTOM_KINDS]
    manifest = tmp_path / "builtin.yaml"
    manifest.write_text(yaml.safe_dump_all(builtin), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", version, str(manifest)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"deploy/{overlay} against {version}:\n{output}"
    # A kind it has no schema for is only a warning: every resource must have been checked.
    assert "WARN" not in output, output
    assert "ERROR" not in output, output
    assert output.count(" passed for resource ") == len(builtin), output


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_custom_resources_match_the_operator_schema(overlay: str) -> None:
    """PodMonitor and PrometheusRule validate against the Prometheus Operator's CRD models."""
    from cloudcoil.models.prometheus_operator import v1  # slow import: only for this test

    custom = [doc for doc in _render(overlay) if doc["kind"] in OPERATOR_KINDS]
    assert sorted(doc["kind"] for doc in custom) == ["PodMonitor", "PrometheusRule"]
    for doc in custom:
        assert doc["apiVersion"] == "monitoring.coreos.com/v1"
        model = getattr(v1, doc["kind"]).model_validate(doc)
        # The models ignore unknown fields: a round trip that loses one reveals a typo.
        dumped = model.model_dump(mode="json", by_alias=True, exclude_unset=True)
        assert dumped == doc, f"deploy/{overlay}: {doc['kind']} has fields the schema lacks"


@pytest.mark.parametrize("overlay", [BASE, SHARED_REDIS])
def test_sidecar_is_a_native_sidecar(overlay: str) -> None:
    """The proxy is an init container with restartPolicy Always, started before the tool."""
    pod = _one(overlay, "Deployment", "security-tool")["spec"]["template"]["spec"]
    sidecars = [c for c in pod.get("initContainers", ()) if _is_proxy(c)]
    assert len(sidecars) == 1, "the tool's pod has no defender-proxy init container"
    assert sidecars[0].get("restartPolicy") == "Always"
    assert not any(_is_proxy(c) for c in pod["containers"])
    tool = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert tool["DEFENDER_API_URL"] == "http://127.0.0.1:8080"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_proxy_probes_use_healthz_and_readyz(overlay: str) -> None:
    """Every proxy has a startup probe, liveness on /healthz and readiness on /readyz."""
    for _, container in _proxies(overlay):
        admin = _port(container, "proxy-admin")
        for probe, path in (
            ("startupProbe", "/readyz"),
            ("livenessProbe", "/healthz"),
            ("readinessProbe", "/readyz"),
        ):
            get = container[probe]["httpGet"]
            assert get["path"] == path, f"deploy/{overlay}: {probe} is not on {path}"
            assert get["port"] in ("proxy-admin", admin)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_locked_down(overlay: str) -> None:
    """Non-root, read-only root fs, no capabilities, no escalation, seccomp RuntimeDefault."""
    for workload in _workloads(overlay):
        pod = workload["spec"]["template"]["spec"]
        pod_context = pod.get("securityContext", {})
        for container in _containers(pod):
            where = f"deploy/{overlay}: {workload['metadata']['name']}/{container['name']}"
            context = container.get("securityContext", {})
            assert {**pod_context, **context}.get("runAsNonRoot") is True, where
            seccomp = context.get("seccompProfile") or pod_context.get("seccompProfile")
            assert seccomp == {"type": "RuntimeDefault"}, where
            assert context.get("readOnlyRootFilesystem") is True, where
            assert context.get("allowPrivilegeEscalation") is False, where
            assert context.get("capabilities", {}).get("drop") == ["ALL"], where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_requests_and_a_memory_limit(overlay: str) -> None:
    """Every container requests CPU and memory and has a memory limit."""
    for workload in _workloads(overlay):
        for container in _containers(workload["spec"]["template"]["spec"]):
            resources = container.get("resources", {})
            where = f"deploy/{overlay}: {workload['metadata']['name']}/{container['name']}"
            assert {"cpu", "memory"} <= set(resources.get("requests", {})), where
            assert "memory" in resources.get("limits", {}), where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_proxy_config_is_accepted_by_the_proxy(overlay: str, secret_files: SecretDir) -> None:
    """The mounted config parses with the proxy's own validator and matches the ports and pod."""
    for workload, container in _proxies(overlay):
        settings = _settings(overlay, workload, container, secret_files)
        pod = workload["spec"]["template"]["spec"]
        assert settings.admin_listen.port == _port(container, "proxy-admin")
        assert settings.shutdown_grace < pod["terminationGracePeriodSeconds"]
        if container in pod.get("initContainers", ()):
            assert str(settings.listen) == "127.0.0.1:8080", "a sidecar listens on loopback"
        else:
            assert str(settings.listen) == "0.0.0.0:8080"
            assert settings.listen.port == _port(container, "proxy")


def test_the_commented_upstreams_example_is_accepted_by_the_proxy() -> None:
    """The base config's commented upstreams example, put in place of upstream + listen, parses
    to two loopback listeners, one per origin, clear of the admin port."""
    lines = (DEPLOY / BASE / "config.yaml").read_text(encoding="utf-8").splitlines()
    start = lines.index("# upstreams:")
    example = [lines[start][2:]]
    example += [line[2:] for line in lines[start + 1 :] if line.startswith("#   - ")]
    kept = [line for line in lines if not line.startswith(("upstream:", "listen:"))]
    settings = parse_settings(yaml.safe_load("\n".join([*kept, *example])), "config.yaml", {})
    assert [(u.name, u.catalogue, str(u.listen)) for u in settings.listeners] == [
        ("defender", "defender", "127.0.0.1:8080"),
        ("graph", "graph", "127.0.0.1:8081"),
    ]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_replica_uses_the_quota_store_its_replica_count_needs(
    overlay: str, secret_files: SecretDir
) -> None:
    """One proxy keeps its quota in memory; several share Redis, with expected_replicas right."""
    proxies = _proxies(overlay)
    replicas = sum(workload["spec"].get("replicas", 1) for workload, _ in proxies)
    stores = set()
    for workload, container in proxies:
        settings = _settings(overlay, workload, container, secret_files)
        stores.add(settings.throttle.store)
        assert settings.throttle.fallback.expected_replicas == replicas, (
            f"deploy/{overlay}: fallback.expected_replicas is not the {replicas} proxies"
        )
    if overlay == BASE:
        assert replicas == 1
        assert stores == {"memory"}
    else:
        assert replicas > 1
        assert stores == {REDIS_STORE}
        service = _one(overlay, "Service", "defender-proxy-redis")
        assert [p["port"] for p in service["spec"]["ports"]] == [6379]
        redis = _one(overlay, "Deployment", "defender-proxy-redis")
        pod_labels = redis["spec"]["template"]["metadata"]["labels"]
        assert _selects({"matchLabels": service["spec"]["selector"]}, pod_labels)


@pytest.mark.parametrize("overlay", [SHARED_REDIS, GATEWAY])
def test_overlay_config_differs_from_the_base_only_where_intended(overlay: str) -> None:
    """An overlay's config.yaml repeats the base's, changing only the keys its deployment needs."""

    def load(directory: str) -> Doc:
        doc: Doc = yaml.safe_load((DEPLOY / directory / "config.yaml").read_text(encoding="utf-8"))
        return doc

    base, config = load(BASE), load(overlay)
    if overlay == GATEWAY:
        assert (base.pop("listen"), config.pop("listen")) == ("127.0.0.1:8080", "0.0.0.0:8080")
        assert config.pop("listen_tls") == {
            "cert": "/etc/defender-proxy-tls/tls.crt",
            "key": "/etc/defender-proxy-tls/tls.key",
        }
    for section in (base, config):
        section["throttle"].pop("store")
        section["throttle"]["fallback"].pop("expected_replicas")
    assert config == base


def test_gateway_network_policy_admits_only_labelled_clients() -> None:
    """The gateway's proxy port admits client-labelled pods only, its admin port Prometheus."""
    gateway = _one(GATEWAY, "Deployment", "defender-proxy")
    labels = gateway["spec"]["template"]["metadata"]["labels"]
    policy = _one(GATEWAY, "NetworkPolicy", "defender-proxy")["spec"]
    assert _selects(policy["podSelector"], labels)
    assert policy["policyTypes"] == ["Ingress"]
    by_port = {rule["ports"][0]["port"]: rule["from"] for rule in policy["ingress"]}
    assert all(len(rule["ports"]) == 1 for rule in policy["ingress"])
    assert set(by_port) == {"proxy", "proxy-admin"}
    assert by_port["proxy"] == [{"podSelector": {"matchLabels": CLIENT_LABEL}}]
    (monitoring,) = by_port["proxy-admin"]
    namespace = monitoring["namespaceSelector"]["matchLabels"]
    assert namespace == {"kubernetes.io/metadata.name": "monitoring"}
    assert "podSelector" in monitoring, "any pod of the monitoring namespace would be admitted"
    service = _one(GATEWAY, "Service", "defender-proxy")["spec"]
    assert _selects({"matchLabels": service["selector"]}, labels)
    assert [(p["port"], p["targetPort"]) for p in service["ports"]] == [(8080, "proxy")]
    # The example tool is now a client: labelled, without a sidecar, calling the Service.
    tool = _one(GATEWAY, "Deployment", "security-tool")["spec"]["template"]
    assert _selects({"matchLabels": CLIENT_LABEL}, tool["metadata"]["labels"])
    assert not any(_is_proxy(c) for c in _containers(tool["spec"]))
    env = {e["name"]: e.get("value") for e in tool["spec"]["containers"][0]["env"]}
    assert env["DEFENDER_API_URL"] == "https://defender-proxy:8080"


def test_the_gateway_serves_the_certificate_cert_manager_issues() -> None:
    """The gateway's Certificate validates against cert-manager's CRD schema, names the Service
    and the operator's Issuer, and its Secret is mounted whole and read-only where listen_tls
    reads it (no subPath, so a renewal reaches the proxy); no other overlay has one."""
    from cloudcoil.models.cert_manager import v1  # slow import: only for this test

    assert not _docs(BASE, "Certificate")
    assert not _docs(SHARED_REDIS, "Certificate")
    (certificate,) = _docs(GATEWAY, "Certificate")
    assert certificate["apiVersion"] == "cert-manager.io/v1"
    model = v1.Certificate.model_validate(certificate)
    dumped = model.model_dump(mode="json", by_alias=True, exclude_unset=True)
    assert dumped == certificate, "the Certificate has fields cert-manager's schema lacks"
    spec = certificate["spec"]
    assert spec["issuerRef"] == {"name": ISSUER, "kind": "Issuer", "group": "cert-manager.io"}
    service = _one(GATEWAY, "Service", "defender-proxy")
    assert service["metadata"]["name"] in spec["dnsNames"]
    ((workload, container),) = _proxies(GATEWAY)
    pod = workload["spec"]["template"]["spec"]
    data, _ = _config(GATEWAY, workload, container)
    mounts = set()
    for path in data["listen_tls"].values():
        mount, volume = _volume(pod, container, path)
        assert volume["secret"]["secretName"] == spec["secretName"]
        assert mount.get("readOnly") is True
        assert "subPath" not in mount
        mounts.add(mount["mountPath"])
    assert [posixpath.basename(p) for p in data["listen_tls"].values()] == ["tls.crt", "tls.key"]
    assert len(mounts) == 1
    # Mode 0440 and the pod's fsGroup: the proxy's group reads the key, no one else.
    assert volume["secret"]["defaultMode"] == 0o440
    assert pod["securityContext"]["fsGroup"] == container["securityContext"]["runAsGroup"]


def _prestop_sleep(container: Doc) -> float:
    """The seconds the container's preStop hook sleeps: an exec of the image's own interpreter,
    beside the Dockerfile's ENTRYPOINT, running exactly ``import time; time.sleep(N)``."""
    entrypoint = next(
        json.loads(line.removeprefix("ENTRYPOINT"))
        for line in DOCKERFILE.read_text(encoding="utf-8").splitlines()
        if line.startswith("ENTRYPOINT")
    )
    interpreter, flag, code = container["lifecycle"]["preStop"]["exec"]["command"]
    assert interpreter == posixpath.join(posixpath.dirname(entrypoint[0]), "python")
    assert flag == "-c"
    match ast.parse(code).body:
        case [
            ast.Import(names=[ast.alias(name="time", asname=None)]),
            ast.Expr(
                ast.Call(
                    func=ast.Attribute(ast.Name("time"), "sleep"),
                    args=[ast.Constant(int() | float() as seconds)],
                    keywords=[],
                )
            ),
        ]:
            return float(seconds)
    raise AssertionError(f"the preStop hook runs {code!r}, not a plain sleep")


def test_gateway_rolls_a_new_pod_in_before_an_old_one_goes() -> None:
    """The gateway surges one pod and takes none away first; its budget keeps one pod serving
    and still lets a node drain evict the other."""
    gateway = _one(GATEWAY, "Deployment", "defender-proxy")
    spec = gateway["spec"]
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    budget = _one(GATEWAY, "PodDisruptionBudget", "defender-proxy")["spec"]
    assert _selects(budget["selector"], spec["template"]["metadata"]["labels"])
    # No other workload of the overlay is held by it.
    for workload in _workloads(GATEWAY):
        if workload is not gateway:
            labels = workload["spec"]["template"]["metadata"]["labels"]
            assert not _selects(budget["selector"], labels), workload["metadata"]["name"]
    replicas = spec["replicas"]
    if "minAvailable" in budget:
        assert 1 <= budget["minAvailable"] < replicas, budget
    else:
        assert 1 <= budget["maxUnavailable"] < replicas, budget


def test_gateway_serves_through_its_prestop_delay_within_the_grace_period(
    secret_files: SecretDir,
) -> None:
    """The gateway's preStop hook sleeps a few seconds with the image's interpreter before
    SIGTERM, and the grace period holds that delay, shutdown_grace and some room."""
    ((workload, container),) = _proxies(GATEWAY)
    seconds = _prestop_sleep(container)
    assert 1 <= seconds <= 15, seconds
    settings = _settings(GATEWAY, workload, container, secret_files)
    grace = workload["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert seconds + settings.shutdown_grace + TERMINATION_ROOM <= grace, (seconds, grace)


@pytest.mark.parametrize("overlay", [SHARED_REDIS, GATEWAY])
def test_redis_admits_exactly_the_pods_that_run_the_proxy(overlay: str) -> None:
    """Redis's NetworkPolicy lets in every proxy pod and no other workload of the overlay."""
    policy = _one(overlay, "NetworkPolicy", "defender-proxy-redis")["spec"]
    (rule,) = policy["ingress"]
    (peer,) = rule["from"]
    for workload in _workloads(overlay):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        runs_proxy = any(_is_proxy(c) for c in _containers(workload["spec"]["template"]["spec"]))
        assert _selects(peer["podSelector"], labels) == runs_proxy, workload["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_podmonitor_scrapes_every_proxy_as_job_defender_proxy(overlay: str) -> None:
    """The PodMonitor selects exactly the proxy pods, on their admin port, as job defender-proxy."""
    monitor = _one(overlay, "PodMonitor", "defender-proxy")["spec"]
    assert [e["port"] for e in monitor["podMetricsEndpoints"]] == ["proxy-admin"]
    assert monitor["jobLabel"] == JOB_LABEL
    for workload in _workloads(overlay):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        proxies = [c for c in _containers(workload["spec"]["template"]["spec"]) if _is_proxy(c)]
        assert _selects(monitor["selector"], labels) == bool(proxies)
        if proxies:
            # The rules' up{job="defender-proxy"} relies on this value.
            assert labels[JOB_LABEL] == "defender-proxy"
            assert _port(proxies[0], "proxy-admin") == 9464


def test_proxy_image_has_one_explicit_tag_everywhere() -> None:
    """Every overlay runs the same, explicitly tagged proxy image."""
    images = {container["image"] for overlay in OVERLAYS for _, container in _proxies(overlay)}
    assert len(images) == 1, images
    (image,) = images
    tag = image.rsplit("/", 1)[-1].partition(":")[2]
    assert tag, image
    assert tag != "latest", image

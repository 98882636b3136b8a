"""The Kustomize deployment in ``deploy/``: every overlay renders, validates and keeps its promises.

Each of ``deploy/base`` (the native sidecar), ``deploy/overlays/shared-redis``,
``deploy/overlays/gateway`` and ``deploy/overlays/workload-identity`` is rendered with the real
``kubectl kustomize``. The built-in kinds are validated with ``kubernetes-validate --strict``
against Kubernetes 1.29 (the first with native sidecars on by default) and the newest version
the package knows; the Prometheus Operator's PodMonitor and PrometheusRule against the
operator's published CRD schemas, as pydantic models (PyPI
``cloudcoil-models-prometheus-operator``), and the gateway's cert-manager Certificate likewise
against cert-manager's CRD schema (PyPI ``cloudcoil-models-cert-manager``). The rest
pins what the issue asks of the manifests: native sidecar, probes, security context, the shared
store for every replica, the gateway's NetworkPolicy, its HTTPS from a mounted Secret, its
rollouts (surge first, a disruption budget, a preStop delay inside the grace period), the
credential the proxy holds (a client secret from a Secret mounted whole, or AKS workload identity,
whose webhook's additions are reproduced here), and a proxy config that the proxy itself accepts,
parsed in-process and by ``defender-proxy check-config``.
"""

from __future__ import annotations

import ast
import functools
import json
import os
import posixpath
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
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
WORKLOAD_IDENTITY = "overlays/workload-identity"
OVERLAYS = (BASE, SHARED_REDIS, GATEWAY, WORKLOAD_IDENTITY)
#: The overlays whose proxy is the example tool's native sidecar.
SIDECARS = (BASE, SHARED_REDIS, WORKLOAD_IDENTITY)
#: The overlays whose proxy takes tokens with the client secret of the Secret below.
CLIENT_SECRET = (BASE, SHARED_REDIS)
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
#: The Secret with the client secret: the operator creates and rotates it (README), no overlay
#: renders it; the example beside the base shows its shape.
CREDENTIAL_SECRET = "defender-proxy-credential"
CREDENTIAL_EXAMPLE = DEPLOY / BASE / "credential-secret.example.yaml"
#: What the AKS workload identity webhook reads (Azure/azure-workload-identity, pkg/webhook): the
#: pod label that has it mutate a pod, the ServiceAccount's annotations, the pod's skip list.
WI_USE = "azure.workload.identity/use"
WI_CLIENT_ID = "azure.workload.identity/client-id"
WI_TENANT_ID = "azure.workload.identity/tenant-id"
WI_SKIP = "azure.workload.identity/skip-containers"
#: The variables the webhook sets in every container it does not skip; AZURE_AUTHORITY_HOST is
#: the public cloud's, as the webhook writes it.
AZURE_VARIABLES = (
    "AZURE_CLIENT_ID",
    "AZURE_TENANT_ID",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_AUTHORITY_HOST",
)
AZURE_PUBLIC_AUTHORITY = "https://login.microsoftonline.com/"

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


@dataclass(frozen=True)
class StandIns:
    """Files that exist only in the cluster, in a temporary directory: a Secret-volume directory
    with a TLS pair, a client secret, and the service account token the webhook projects."""

    tls: SecretDir
    client_secret: str
    federated_token: str


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory: pytest.TempPathFactory) -> StandIns:
    """Stand-ins for the files of a pod's Secrets and of its projected token."""
    root = tmp_path_factory.mktemp("secrets")
    tls = SecretDir(root / "tls")
    tls.put(issue(trustme.CA()))
    client_secret = root / "client-secret"
    client_secret.write_text("stand-in-client-secret", encoding="utf-8")
    federated_token = root / "azure-identity-token"
    federated_token.write_text("stand-in.service-account.token", encoding="utf-8")
    return StandIns(tls, str(client_secret), str(federated_token))


def _env_names(container: Doc) -> set[str]:
    return {item["name"] for item in container.get("env", ())}


def _webhook_env(overlay: str, workload: Doc, container: Doc, token_file: str) -> dict[str, str]:
    """The variables the workload identity webhook adds to ``container`` when the pod is created:
    none if the pod lacks the webhook's label or its skip list names the container; else the ids
    of the pod's ServiceAccount and the file it projects the token to (``token_file`` stands in),
    each only where the container does not set that variable itself."""
    template = workload["spec"]["template"]
    if template["metadata"].get("labels", {}).get(WI_USE) != "true":
        return {}
    skip = template["metadata"].get("annotations", {}).get(WI_SKIP, "")
    if container["name"] in {name.strip() for name in skip.split(";")}:
        return {}
    account = _one(overlay, "ServiceAccount", template["spec"].get("serviceAccountName", "default"))
    annotations = account["metadata"].get("annotations", {})
    added = {
        "AZURE_CLIENT_ID": annotations[WI_CLIENT_ID],
        # Without the annotation the webhook would use the cluster's tenant, unknown here.
        "AZURE_TENANT_ID": annotations[WI_TENANT_ID],
        "AZURE_FEDERATED_TOKEN_FILE": token_file,
        "AZURE_AUTHORITY_HOST": AZURE_PUBLIC_AUTHORITY,
    }
    return {name: value for name, value in added.items() if name not in _env_names(container)}


def _in_pod(
    overlay: str, workload: Doc, container: Doc, stand_ins: StandIns
) -> tuple[Doc, dict[str, str]]:
    """The config this proxy container reads and the environment it runs with, webhook included.

    ``listen_tls`` and ``credentials.client_secret_file`` name files of mounted Secrets that exist
    only in the cluster: each must be in one of the container's Secret volumes, and a file of
    ``stand_ins`` takes its place."""
    data, env = _config(overlay, workload, container)
    pod = workload["spec"]["template"]["spec"]
    replacements = {
        ("listen_tls", "cert"): stand_ins.tls.files.cert,
        ("listen_tls", "key"): stand_ins.tls.files.key,
        ("credentials", "client_secret_file"): stand_ins.client_secret,
    }
    for (section, key), stand_in in replacements.items():
        if key in data.get(section, {}):
            _, volume = _volume(pod, container, data[section][key])
            assert "secret" in volume, f"deploy/{overlay}: {section}.{key} is not in a Secret"
            data[section][key] = stand_in
    webhook = _webhook_env(overlay, workload, container, stand_ins.federated_token)
    return data, {**env, **webhook}


def _settings(overlay: str, workload: Doc, container: Doc, stand_ins: StandIns) -> Settings:
    """The settings this proxy container starts with: its mounted config file and its env."""
    data, env = _in_pod(overlay, workload, container, stand_ins)
    return parse_settings(data, f"deploy/{overlay}: {env['DEFENDER_PROXY_CONFIG']}", environ=env)


def _check_config(data: Doc, env: dict[str, str], path: Path) -> subprocess.CompletedProcess[str]:
    """``defender-proxy check-config`` run on ``data`` with exactly ``env`` (nothing of the test
    process's own, which could fill or override a key)."""
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    environ = {"PATH": os.environ.get("PATH", ""), **env}
    environ.pop("DEFENDER_PROXY_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "proxy", "check-config", str(path)],
        capture_output=True,
        text=True,
        env=environ,
        timeout=60,
    )


def _kubernetes_validate(docs: list[Doc], version: str, tmp_path: Path) -> None:
    """kubernetes-validate --strict accepts every one of ``docs`` against ``version``."""
    manifest = tmp_path / "builtin.yaml"
    manifest.write_text(yaml.safe_dump_all(docs), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", version, str(manifest)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"against {version}:\n{output}"
    # A kind it has no schema for is only a warning: every resource must have been checked.
    assert "WARN" not in output, output
    assert "ERROR" not in output, output
    assert output.count(" passed for resource ") == len(docs), output


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
    _kubernetes_validate(
        [doc for doc in _render(overlay) if doc["kind"] not in CUSTOM_KINDS], version, tmp_path
    )


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


@pytest.mark.parametrize("overlay", SIDECARS)
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
def test_every_mount_names_a_volume_of_its_pod(overlay: str) -> None:
    """Every volume mount names a volume of its pod (a patch that drops a volume drops its mounts
    too), and no volume is left that nothing mounts; the API server checks neither offline."""
    for workload in _workloads(overlay):
        pod = workload["spec"]["template"]["spec"]
        volumes = {volume["name"] for volume in pod.get("volumes", ())}
        mounted = set()
        for container in _containers(pod):
            where = f"deploy/{overlay}: {workload['metadata']['name']}/{container['name']}"
            names = {mount["name"] for mount in container.get("volumeMounts", ())}
            assert names <= volumes, f"{where} mounts {names - volumes}, which the pod lacks"
            mounted |= names
        assert volumes <= mounted, f"deploy/{overlay}: nothing mounts {volumes - mounted}"


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
def test_proxy_config_is_accepted_by_the_proxy(overlay: str, stand_ins: StandIns) -> None:
    """The mounted config parses with the proxy's own validator and matches the ports and pod."""
    for workload, container in _proxies(overlay):
        settings = _settings(overlay, workload, container, stand_ins)
        pod = workload["spec"]["template"]["spec"]
        assert settings.admin_listen.port == _port(container, "proxy-admin")
        assert settings.shutdown_grace < pod["terminationGracePeriodSeconds"]
        if container in pod.get("initContainers", ()):
            assert str(settings.listen) == "127.0.0.1:8080", "a sidecar listens on loopback"
        else:
            assert str(settings.listen) == "0.0.0.0:8080"
            assert settings.listen.port == _port(container, "proxy")


def test_the_commented_upstreams_example_is_accepted_by_the_proxy(tmp_path: Path) -> None:
    """The base config's commented upstreams example, put in place of upstream + listen, parses
    to two loopback listeners, one per origin, clear of the admin port, each holding the
    credential with its own origin's scope."""
    secret = tmp_path / "client-secret"
    secret.write_text("stand-in", encoding="utf-8")
    text = (DEPLOY / BASE / "config.yaml").read_text(encoding="utf-8")
    lines = text.replace("/var/run/secrets/defender/client-secret", str(secret)).splitlines()
    start = lines.index("# upstreams:")
    example = [lines[start][2:]]
    example += [line[2:] for line in lines[start + 1 :] if line.startswith("#   - ")]
    kept = [line for line in lines if not line.startswith(("upstream:", "listen:"))]
    settings = parse_settings(yaml.safe_load("\n".join([*kept, *example])), "config.yaml", {})
    assert [(u.name, u.catalogue, str(u.listen)) for u in settings.listeners] == [
        ("defender", "defender", "127.0.0.1:8080"),
        ("graph", "graph", "127.0.0.1:8081"),
    ]
    assert [u.credentials.scope for u in settings.listeners if u.credentials] == [
        "https://api.securitycenter.microsoft.com/.default",
        "https://graph.microsoft.com/.default",
    ]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_check_config_accepts_every_rendered_config(
    overlay: str, stand_ins: StandIns, tmp_path: Path
) -> None:
    """``defender-proxy check-config`` accepts the config each proxy container mounts, with that
    container's environment (the workload identity webhook's variables included) and stand-ins
    for its Secrets' files, and has no warning to give about it."""
    for index, (workload, container) in enumerate(_proxies(overlay)):
        data, env = _in_pod(overlay, workload, container, stand_ins)
        result = _check_config(data, env, tmp_path / f"config-{index}.yaml")
        where = f"deploy/{overlay}: {workload['metadata']['name']}/{container['name']}"
        assert result.returncode == 0, f"{where}:\n{result.stderr}"
        assert result.stderr == "", f"{where}:\n{result.stderr}"
        assert ": ok (" in result.stdout, result.stdout


@pytest.mark.parametrize("overlay", CLIENT_SECRET)
def test_the_commented_client_secret_expires_is_accepted_by_check_config(
    overlay: str, stand_ins: StandIns, tmp_path: Path
) -> None:
    """The config's commented client_secret_expires, uncommented in place, passes check-config:
    the example shows a key and a date form the proxy takes."""
    text = (DEPLOY / overlay / "config.yaml").read_text(encoding="utf-8")
    commented = [
        line for line in text.splitlines() if line.startswith("  # client_secret_expires:")
    ]
    assert len(commented) == 1, f"deploy/{overlay}/config.yaml: no commented client_secret_expires"
    uncommented = text.replace(commented[0], "  " + commented[0].removeprefix("  # "))
    data = yaml.safe_load(uncommented)
    assert "client_secret_expires" in data["credentials"]
    ((workload, container),) = _proxies(overlay)
    _, env = _in_pod(overlay, workload, container, stand_ins)
    data["credentials"]["client_secret_file"] = stand_ins.client_secret
    result = _check_config(data, env, tmp_path / "config.yaml")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_a_proxy_holding_a_credential_answers_only_its_own_pod_or_allow_from(
    overlay: str, stand_ins: StandIns
) -> None:
    """Whoever reaches a proxy that holds a credential acts as the app: such a proxy listens on
    loopback only, or names the callers it serves in allow_from."""
    loopback = {"127.0.0.1", "::1", "localhost"}
    for workload, container in _proxies(overlay):
        data, env = _in_pod(overlay, workload, container, stand_ins)
        kinds = (
            "AZURE_CLIENT_SECRET",
            "AZURE_CLIENT_CERTIFICATE_PATH",
            "AZURE_FEDERATED_TOKEN_FILE",
        )
        holds = "credentials" in data or any(name in env for name in kinds)
        listens = [env.get("DEFENDER_PROXY_LISTEN", data.get("listen", "127.0.0.1:8080"))]
        listens += [upstream["listen"] for upstream in data.get("upstreams", ())]
        hosts = {str(listen).rpartition(":")[0].strip("[]") for listen in listens}
        if holds and not hosts <= loopback:
            assert data.get("allow_from"), f"deploy/{overlay}: {hosts} with a credential"


def test_the_credential_secret_is_the_operators_and_shaped_as_its_example(tmp_path: Path) -> None:
    """No overlay renders the credential Secret (so `kubectl apply -k` never puts an old value
    back over a rotated one); its example validates, and its one key is the file the config reads,
    with a value that is plainly a placeholder."""
    for overlay in OVERLAYS:
        names = [doc["metadata"]["name"] for doc in _docs(overlay, "Secret")]
        assert CREDENTIAL_SECRET not in names, f"deploy/{overlay} renders {CREDENTIAL_SECRET}"
    (example,) = yaml.safe_load_all(CREDENTIAL_EXAMPLE.read_text(encoding="utf-8"))
    for version in K8S_VERSIONS:
        _kubernetes_validate([example], version, tmp_path)
    assert (example["kind"], example["metadata"]["name"]) == ("Secret", CREDENTIAL_SECRET)
    files = {
        posixpath.basename(_config(overlay, w, c)[0]["credentials"]["client_secret_file"])
        for overlay in CLIENT_SECRET
        for w, c in _proxies(overlay)
    }
    assert set(example["stringData"]) == files == {"client-secret"}
    assert "placeholder" in example["stringData"]["client-secret"]


@pytest.mark.parametrize("overlay", CLIENT_SECRET)
def test_the_client_secret_is_a_whole_secret_mounted_read_only_for_the_proxy(overlay: str) -> None:
    """client_secret_file is in the Secret defender-proxy-credential, mounted whole (no subPath,
    no items: the kubelet's ..data swap of a rotated secret reaches the proxy) and read-only,
    mode 0440 with the proxy's group as the pod's fsGroup; no other container mounts it."""
    for workload, container in _proxies(overlay):
        pod = workload["spec"]["template"]["spec"]
        data, _ = _config(overlay, workload, container)
        mount, volume = _volume(pod, container, data["credentials"]["client_secret_file"])
        assert volume["secret"]["secretName"] == CREDENTIAL_SECRET
        assert "items" not in volume["secret"]
        assert volume["secret"].get("optional") is not True, "a pod without it would start"
        assert mount.get("readOnly") is True
        assert "subPath" not in mount
        assert volume["secret"]["defaultMode"] == 0o440
        assert pod["securityContext"]["fsGroup"] == container["securityContext"]["runAsGroup"]
        for other in _containers(pod):
            if other is not container:
                names = {m["name"] for m in other.get("volumeMounts", ())}
                assert volume["name"] not in names, f"{other['name']} can read the secret"


def test_workload_identity_replaces_the_secret_with_the_webhooks_federated_token() -> None:
    """The pod carries the webhook's label and runs as a ServiceAccount annotated with client and
    tenant ids; the webhook skips every container but the proxy; no Secret volume is left, and
    neither the config nor the container names a credential, so the proxy's token file is the one
    the webhook projects and names in AZURE_FEDERATED_TOKEN_FILE, wherever its version puts it."""
    template = _one(WORKLOAD_IDENTITY, "Deployment", "security-tool")["spec"]["template"]
    assert template["metadata"]["labels"][WI_USE] == "true"
    pod = template["spec"]
    account = _one(WORKLOAD_IDENTITY, "ServiceAccount", pod["serviceAccountName"])
    annotations = account["metadata"]["annotations"]
    uuid.UUID(annotations[WI_CLIENT_ID])
    uuid.UUID(annotations[WI_TENANT_ID])
    ((workload, container),) = _proxies(WORKLOAD_IDENTITY)
    skipped = set(template["metadata"]["annotations"][WI_SKIP].split(";"))
    assert skipped == {c["name"] for c in _containers(pod)} - {container["name"]}
    assert not [v["name"] for v in pod["volumes"] if "secret" in v or "projected" in v]
    assert not _docs(WORKLOAD_IDENTITY, "Secret")
    data, _ = _config(WORKLOAD_IDENTITY, workload, container)
    assert "credentials" not in data
    # The webhook adds a variable only where the container has none of that name.
    assert not _env_names(container) & set(AZURE_VARIABLES)
    added = _webhook_env(WORKLOAD_IDENTITY, workload, container, "/token")
    assert set(added) == set(AZURE_VARIABLES)
    assert added["AZURE_FEDERATED_TOKEN_FILE"] == "/token"
    # The projected token's file is 0640 of the fsGroup: the proxy's group reads it.
    assert pod["securityContext"]["fsGroup"] == container["securityContext"]["runAsGroup"]


def test_the_gateway_passes_its_callers_tokens_on_and_holds_no_credential() -> None:
    """The gateway's config has no credentials and its pods mount no credential Secret; the example
    tool, now its client, keeps neither the Secret's volume nor the proxy's fsGroup."""
    for workload, container in _proxies(GATEWAY):
        data, _ = _config(GATEWAY, workload, container)
        assert "credentials" not in data
        assert not _env_names(container) & {"AZURE_CLIENT_SECRET", *AZURE_VARIABLES}
        secrets = {
            v["secret"]["secretName"]
            for v in workload["spec"]["template"]["spec"]["volumes"]
            if "secret" in v
        }
        assert CREDENTIAL_SECRET not in secrets
    tool = _one(GATEWAY, "Deployment", "security-tool")["spec"]["template"]["spec"]
    assert not [v["name"] for v in tool["volumes"] if "secret" in v]
    assert "fsGroup" not in tool["securityContext"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_replica_uses_the_quota_store_its_replica_count_needs(
    overlay: str, stand_ins: StandIns
) -> None:
    """One proxy keeps its quota in memory; several share Redis, with expected_replicas right."""
    proxies = _proxies(overlay)
    replicas = sum(workload["spec"].get("replicas", 1) for workload, _ in proxies)
    stores = set()
    for workload, container in proxies:
        settings = _settings(overlay, workload, container, stand_ins)
        stores.add(settings.throttle.store)
        assert settings.throttle.fallback.expected_replicas == replicas, (
            f"deploy/{overlay}: fallback.expected_replicas is not the {replicas} proxies"
        )
    if overlay in (BASE, WORKLOAD_IDENTITY):
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


@pytest.mark.parametrize("overlay", [SHARED_REDIS, GATEWAY, WORKLOAD_IDENTITY])
def test_overlay_config_differs_from_the_base_only_where_intended(overlay: str) -> None:
    """An overlay's config.yaml repeats the base's, changing only the keys its deployment needs."""

    def load(directory: str) -> Doc:
        doc: Doc = yaml.safe_load((DEPLOY / directory / "config.yaml").read_text(encoding="utf-8"))
        return doc

    base, config = load(BASE), load(overlay)
    if overlay in (GATEWAY, WORKLOAD_IDENTITY):
        # The gateway passes its callers' tokens on; workload identity's webhook makes the section.
        assert "credentials" in base
        assert "credentials" not in config
        base.pop("credentials")
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

    for overlay in OVERLAYS:
        if overlay != GATEWAY:
            assert not _docs(overlay, "Certificate"), overlay
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
    stand_ins: StandIns,
) -> None:
    """The gateway's preStop hook sleeps a few seconds with the image's interpreter before
    SIGTERM, and the grace period holds that delay, shutdown_grace and some room."""
    ((workload, container),) = _proxies(GATEWAY)
    seconds = _prestop_sleep(container)
    assert 1 <= seconds <= 15, seconds
    settings = _settings(GATEWAY, workload, container, stand_ins)
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

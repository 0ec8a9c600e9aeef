"""The deployment files under deploy/ validate offline and agree with the code.

* the compose file passes ``docker-compose config`` and the Compose Specification schema;
* the Kubernetes manifests pass their API schemas (strict) and reference each other
  consistently (labels and selectors, Secrets, ConfigMaps, claims, ports, the HPA target);
* every container and unit command is a real ``radnode`` subcommand (the real parser);
* every ``RADNODE_*`` variable names a real settings key, and each container's variables
  with its mounted TOML file load as valid settings whose paths lie on mounted volumes;
* the HPA's External metric is a series the node's ``/metrics`` really exports;
* the systemd units pass ``systemd-analyze verify``.

Each validator is also shown to reject a broken copy, so a pass means something.
"""

from __future__ import annotations

import copy
import enum
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
import yaml
from pydantic import BaseModel, SecretStr

from node.cli.main import build_parser
from node.config import CONFIG_ENV_VAR, Settings, load_settings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE_DIR = DEPLOY / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
K8S_DIR = DEPLOY / "kubernetes"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
SYSTEMD_DIR = DEPLOY / "systemd"
EXAMPLE_TOML = DEPLOY / "radnode.example.toml"
COMPOSE_ENV = {"RADNODE_DB_PASSWORD": "examplepassword0"}
K8S_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
ENV_PREFIX = "RADNODE_"


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path is not None, f"{name} is not installed (make system-deps installs it)"
    return path


# ------------------------------------------------------------------------------------------
# Settings keys and values
# ------------------------------------------------------------------------------------------

def settings_key_error(name: str) -> str | None:
    """Why ``name`` is not a ``RADNODE_<SECTION>__<KEY>`` settings variable (None when it is)."""
    if name == CONFIG_ENV_VAR:
        return None
    if not name.startswith(ENV_PREFIX):
        return f"{name} lacks the {ENV_PREFIX} prefix"
    model: type[BaseModel] = Settings
    parts = name[len(ENV_PREFIX):].lower().split("__")
    for index, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return f"{name}: {part!r} is not a key of {model.__name__}"
        annotation = field.annotation
        last = index == len(parts) - 1
        is_section = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        if last and is_section:
            return f"{name} names the section {part!r}, not a key"
        if not last:
            if not is_section:
                return f"{name}: {part!r} is a value, not a section"
            model = annotation
    return None


def settings_value(settings: Settings, name: str) -> Any:
    value: Any = settings
    for part in name[len(ENV_PREFIX):].lower().split("__"):
        value = getattr(value, part)
    return value


def same_value(loaded: Any, text: str) -> bool:
    if isinstance(loaded, SecretStr):
        return loaded.get_secret_value() == text
    if isinstance(loaded, bool):
        return loaded == (text.strip().lower() in ("1", "true", "yes", "on"))
    if isinstance(loaded, enum.Enum):
        return str(loaded.value) == text
    if isinstance(loaded, float | int):
        return float(loaded) == float(text)
    return str(loaded) == text


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    return monkeypatch


def load_with(monkeypatch: pytest.MonkeyPatch, env: dict[str, str],
              config_file: Path | None) -> Settings:
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    for name, value in env.items():
        if name != CONFIG_ENV_VAR:
            monkeypatch.setenv(name, value)
    if config_file is not None:
        monkeypatch.setenv(CONFIG_ENV_VAR, str(config_file))
    settings = load_settings()
    for name, value in env.items():
        if name != CONFIG_ENV_VAR:
            assert same_value(settings_value(settings, name), value), (name, value)
    return settings


def under(path: Path | str, mounts: list[str]) -> bool:
    pure = PurePosixPath(str(path))
    return any(pure == PurePosixPath(m) or PurePosixPath(m) in pure.parents for m in mounts)


# ------------------------------------------------------------------------------------------
# Commands
# ------------------------------------------------------------------------------------------

def radnode_command_error(argv: list[str]) -> str | None:
    """Why ``argv`` (``radnode ...``) is not accepted by the real parser (None when it is)."""
    if not argv or Path(argv[0]).name != "radnode":
        return f"{argv} does not run radnode"
    try:
        build_parser().parse_args(argv[1:])
    except SystemExit as exc:
        return f"{argv}: the radnode parser refuses it (exit {exc.code})"
    return None


# ------------------------------------------------------------------------------------------
# Compose
# ------------------------------------------------------------------------------------------

def compose_config(path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **COMPOSE_ENV}
    return subprocess.run([_tool("docker-compose"), "-f", str(path), "config"],
                          capture_output=True, text=True, env=env, cwd=path.parent,
                          timeout=120, check=False)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The compose file as docker-compose resolves it (anchors, interpolation, paths)."""
    result = compose_config(COMPOSE_FILE)
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert isinstance(resolved, dict)
    return resolved


def compose_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of each volume of a resolved service (short or long syntax)."""
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            parts = volume.split(":")
            mounts.append((parts[0], parts[1]))
        else:
            mounts.append((str(volume.get("source", "")), str(volume["target"])))
    return mounts


def check_compose_schema(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
         str(path)], capture_output=True, text=True, timeout=120, check=False)


def test_compose_file_passes_docker_compose_config(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {"postgres", "redis", "migrate", "node", "worker"}


def test_compose_file_matches_the_compose_specification() -> None:
    result = check_compose_schema(COMPOSE_FILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_validators_reject_a_broken_file(tmp_path: Path) -> None:
    raw = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    for service in raw["services"].values():
        if isinstance(service.get("build"), dict):
            service["build"]["context"] = str(REPO)
    broken = copy.deepcopy(raw)
    broken["services"]["node"]["healthcheck"]["intervall"] = "30s"
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(broken), encoding="utf-8")
    assert check_compose_schema(path).returncode != 0
    assert compose_config(path).returncode != 0
    broken = copy.deepcopy(raw)
    broken["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"] = "nvidia"
    path.write_text(yaml.safe_dump(broken), encoding="utf-8")
    assert check_compose_schema(path).returncode != 0
    assert compose_config(path).returncode != 0
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")  # the fixed-up copy itself passes
    assert compose_config(path).returncode == 0


def test_compose_services_wiring(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["migrate"]["command"] == ["radnode", "db", "upgrade"]
    assert services["migrate"]["restart"] == "no"
    for name in ("node", "worker"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["redis"]["condition"] == "service_healthy"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"

    ports = {(int(p["target"]), p.get("protocol", "tcp")) if isinstance(p, dict)
             else (int(str(p).split(":")[-1].split("/")[0]), "tcp")
             for p in services["node"]["ports"]}
    assert {(11112, "tcp"), (8080, "tcp")} <= ports
    probe = " ".join(services["node"]["healthcheck"]["test"])
    assert re.search(r"http://127\.0\.0\.1:8080/(readyz|healthz)", probe)

    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices and devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]

    volumes = set(compose["volumes"])
    assert {"database", "storage", "models"} <= volumes
    used = {source for s in services.values() for source, _ in compose_mounts(s)}
    assert volumes <= used, "a named volume is declared but not mounted"
    assert ("database", "/var/lib/postgresql/data") in compose_mounts(services["postgres"])


def test_compose_settings_load_and_paths_are_on_volumes(
        compose: dict[str, Any], clean_env: pytest.MonkeyPatch) -> None:
    checked = 0
    for name, service in compose["services"].items():
        env = {k: str(v) for k, v in (service.get("environment") or {}).items()
               if k.startswith(ENV_PREFIX)}
        if not env:
            continue
        for key in env:
            assert settings_key_error(key) is None, settings_key_error(key)
        mounts = compose_mounts(service)
        config_target = env.get(CONFIG_ENV_VAR)
        assert config_target, f"{name}: RADNODE_CONFIG not set"
        sources = [Path(src) for src, dst in mounts if dst == config_target]
        assert sources, f"{name}: nothing mounted at {config_target}"
        assert sources[0].is_file() and sources[0].is_relative_to(COMPOSE_DIR)
        settings = load_with(clean_env, env, sources[0])
        assert settings.database.url.startswith("postgresql+psycopg://")
        assert settings.broker.url.startswith("redis://")
        if service["command"][:2] == ["radnode", "db"]:
            continue
        targets = [dst for _, dst in mounts]
        assert under(settings.storage.root, targets), (name, settings.storage.root)
        assert under(settings.model.bundle, targets), (name, settings.model.bundle)
        if name == "node":
            assert settings.web.host == "0.0.0.0" and settings.web.port == 8080
            assert settings.dicom.port == 11112
            assert under(settings.web.secret_key_file, targets)
        checked += 1
    assert checked == 2  # node and worker


# ------------------------------------------------------------------------------------------
# Kubernetes
# ------------------------------------------------------------------------------------------

def k8s_files() -> list[Path]:
    return sorted(p for p in K8S_DIR.glob("*.yaml") if p.name != "kustomization.yaml")


@pytest.fixture(scope="module")
def manifests() -> list[dict[str, Any]]:
    docs = []
    for path in k8s_files():
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc:
                doc.setdefault("__file__", path.name)
                docs.append(doc)
    return docs


def strip(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "__file__"}


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for doc in docs:
        if doc["kind"] in ("Deployment", "Job"):
            yield doc, doc["spec"]["template"]["spec"]


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text(encoding="utf-8"))
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == [p.name for p in k8s_files()]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kubernetes_manifests_validate_against_their_schemas(
        manifests: list[dict[str, Any]], version: str) -> None:
    for doc in manifests:
        try:
            kubernetes_validate.validate(strip(doc), version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['__file__']} {doc['kind']}/{doc['metadata']['name']}: "
                        f"{exc.message} at {list(exc.path)}")


def test_kubernetes_validation_rejects_a_broken_manifest(manifests: list[dict[str, Any]]) -> None:
    deployment = strip(copy.deepcopy(by_kind(manifests, "Deployment")["radnode-node"]))
    deployment["spec"]["replica"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)
    hpa = strip(copy.deepcopy(by_kind(manifests, "HorizontalPodAutoscaler")["radnode-worker"]))
    hpa["spec"]["metrics"][0]["external"]["target"]["type"] = 7
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(hpa, K8S_VERSIONS[-1], strict=True)


def test_kubernetes_objects_reference_each_other(manifests: list[dict[str, Any]]) -> None:
    namespaces = by_kind(manifests, "Namespace")
    assert list(namespaces) == ["radnode"]
    for doc in manifests:
        labels = doc["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/name") == "radnode", doc["__file__"]
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "radnode", doc["__file__"]

    secrets = {name: d.get("stringData", {}) | d.get("data", {})
               for name, d in by_kind(manifests, "Secret").items()}
    config_maps = by_kind(manifests, "ConfigMap")
    claims = by_kind(manifests, "PersistentVolumeClaim")
    for owner, spec in pod_specs(manifests):
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for volume in volumes.values():
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps
            if "secret" in volume:
                assert volume["secret"]["secretName"] in secrets
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims
        for container in spec["containers"]:
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, (owner["metadata"]["name"], mount["name"])
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secrets[ref["name"]], ref

    deployments = by_kind(manifests, "Deployment")
    components = set()
    for name, deployment in deployments.items():
        selector = deployment["spec"]["selector"]["matchLabels"]
        template_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= template_labels.items(), name
        assert {"app.kubernetes.io/name", "app.kubernetes.io/instance",
                "app.kubernetes.io/component"} <= set(selector), name
        components.add(selector["app.kubernetes.io/component"])
    assert components == {"node", "worker"}
    selectors = [frozenset(d["spec"]["selector"]["matchLabels"].items())
                 for d in deployments.values()]
    assert len(set(selectors)) == len(selectors), "two Deployments share a selector"

    node = deployments["radnode-node"]
    node_labels = node["spec"]["template"]["metadata"]["labels"]
    node_ports = {p["name"]: p for c in node["spec"]["template"]["spec"]["containers"]
                  for p in c.get("ports", [])}
    services = by_kind(manifests, "Service")
    for name, service in services.items():
        selector = service["spec"]["selector"]
        assert selector.items() <= node_labels.items(), name
        worker_labels = deployments["radnode-worker"]["spec"]["template"]["metadata"]["labels"]
        assert not selector.items() <= worker_labels.items(), name
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in node_ports, (name, port)
            assert node_ports[port["targetPort"]]["containerPort"] == port["port"]
    dicom = [s for s in services.values() if s["spec"]["type"] in ("LoadBalancer", "NodePort")]
    assert [(p["port"], p["protocol"]) for s in dicom for p in s["spec"]["ports"]] \
        == [(11112, "TCP")]
    web = [s for s in services.values() if s["spec"]["type"] == "ClusterIP"]
    assert [p["port"] for s in web for p in s["spec"]["ports"]] == [8080]

    ingress = next(iter(by_kind(manifests, "Ingress").values()))
    assert ingress["spec"]["tls"] and ingress["spec"]["tls"][0]["secretName"]
    for rule in ingress["spec"]["rules"]:
        assert rule["host"] in ingress["spec"]["tls"][0]["hosts"]
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["name"] in services
            port_names = {p["name"] for p in services[backend["name"]]["spec"]["ports"]}
            assert backend["port"].get("name") in port_names

    probes = node["spec"]["template"]["spec"]["containers"][0]
    assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz"

    worker = deployments["radnode-worker"]["spec"]["template"]["spec"]["containers"][0]
    assert str(worker["resources"]["limits"]["nvidia.com/gpu"]) == "1"

    hpa = next(iter(by_kind(manifests, "HorizontalPodAutoscaler").values()))
    assert hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
    assert hpa["spec"]["scaleTargetRef"]["name"] == "radnode-worker"
    assert [m["type"] for m in hpa["spec"]["metrics"]] == ["External"]

    job = next(iter(by_kind(manifests, "Job").values()))
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == [
        "radnode", "db", "upgrade"]


def test_hpa_metric_is_the_queue_depth_the_node_exports(
        manifests: list[dict[str, Any]], tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    from tests.integration.web_seed import build_web_env

    hpa = next(iter(by_kind(manifests, "HorizontalPodAutoscaler").values()))
    metric = hpa["spec"]["metrics"][0]["external"]["metric"]
    assert metric["name"].startswith("radnode_")
    labels = metric["selector"]["matchLabels"]
    env = build_web_env(tmp_path, f"sqlite:///{tmp_path / 'metrics.db'}")
    try:
        text = env.client.get("/metrics").text
    finally:
        env.close()
    assert f"# TYPE {metric['name']} gauge" in text
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    assert re.search(rf"^{re.escape(metric['name'])}{{{re.escape(wanted)}}} \d+$", text,
                     re.MULTILINE), f"no {metric['name']}{{{wanted}}} sample in /metrics"


def k8s_container_env(container: dict[str, Any],
                      secrets: dict[str, dict[str, str]]) -> dict[str, str]:
    env = {}
    for entry in container.get("env", []):
        if not entry["name"].startswith(ENV_PREFIX):
            continue
        if "value" in entry:
            env[entry["name"]] = str(entry["value"])
        else:
            ref = entry["valueFrom"]["secretKeyRef"]
            env[entry["name"]] = secrets[ref["name"]][ref["key"]]
    return env


def test_kubernetes_settings_load_and_paths_are_on_volumes(
        manifests: list[dict[str, Any]], tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    secrets = {name: d.get("stringData", {}) for name, d in by_kind(manifests, "Secret").items()}
    config_maps = by_kind(manifests, "ConfigMap")
    checked = 0
    for owner, spec in pod_specs(manifests):
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for container in spec["containers"]:
            env = k8s_container_env(container, secrets)
            for key in env:
                assert settings_key_error(key) is None, settings_key_error(key)
            mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
            config_mount = mounts[env[CONFIG_ENV_VAR]]
            source = volumes[config_mount["name"]]["configMap"]["name"]
            config_file = tmp_path / f"{owner['metadata']['name']}.toml"
            config_file.write_text(config_maps[source]["data"][config_mount["subPath"]],
                                   encoding="utf-8")
            settings = load_with(clean_env, env, config_file)
            assert settings.database.url.startswith("postgresql+psycopg://")
            if container["command"][:2] == ["radnode", "db"]:
                continue
            targets = list(mounts)
            assert under(settings.storage.root, targets)
            assert under(settings.model.bundle, targets)
            assert settings.broker.url.startswith("redis://")
            if container["command"][:2] == ["radnode", "worker"]:
                assert settings.worker.instance_source.value == "http"
                assert settings.worker.token_file is not None
                assert under(settings.worker.token_file, targets)
                token_mount = next(m for p, m in mounts.items()
                                   if under(settings.worker.token_file, [p]))
                secret = volumes[token_mount["name"]]["secret"]["secretName"]
                assert settings.worker.token_file.name in secrets[secret]
                assert settings.worker.scratch_dir is not None
                assert under(settings.worker.scratch_dir, targets)
                host = re.match(r"https?://([^.:/]+)", settings.worker.node_url)
                assert host and host.group(1) in by_kind(manifests, "Service")
            else:
                assert settings.web.host == "0.0.0.0" and settings.web.port == 8080
                assert settings.dicom.port == 11112
            checked += 1
    assert checked == 2


# ------------------------------------------------------------------------------------------
# Commands everywhere, variables everywhere
# ------------------------------------------------------------------------------------------

def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            rows.append((keyword.upper(), rest.strip()))
    return rows


def systemd_units() -> list[Path]:
    return sorted(SYSTEMD_DIR.glob("*.service"))


def systemd_values(unit: Path, key: str) -> list[str]:
    return [line.split("=", 1)[1].strip() for line in unit.read_text(encoding="utf-8").splitlines()
            if line.startswith(f"{key}=")]


def all_commands(compose: dict[str, Any], manifests: list[dict[str, Any]]) -> list[list[str]]:
    commands = []
    for service in compose["services"].values():
        if str(service.get("image", "")).startswith("radnode"):
            commands.append(list(service["command"]))
    for _, spec in pod_specs(manifests):
        for container in spec["containers"]:
            commands.append(list(container.get("command", [])) + list(container.get("args", [])))
    for unit in systemd_units():
        for key in ("ExecStartPre", "ExecStart"):
            for value in systemd_values(unit, key):
                commands.append([a.replace("%i", "0") for a in shlex.split(value.lstrip("-"))])
    for keyword, rest in dockerfile_instructions():
        if keyword in ("CMD", "ENTRYPOINT"):
            commands.append(json.loads(rest))
    return commands


def test_every_command_is_a_real_radnode_subcommand(
        compose: dict[str, Any], manifests: list[dict[str, Any]]) -> None:
    commands = all_commands(compose, manifests)
    errors = [e for e in map(radnode_command_error, commands) if e]
    assert not errors, errors
    seen = {tuple(c[1:3]) if c[1] == "db" else (c[1],) for c in commands}
    assert {("serve",), ("worker",), ("db", "upgrade")} <= seen
    assert radnode_command_error(["radnode", "db", "migrate"]) is not None
    assert radnode_command_error(["radnode", "worker", "--gpus", "1"]) is not None


def all_variables(compose: dict[str, Any], manifests: list[dict[str, Any]]) -> dict[str, str]:
    found: dict[str, str] = {}
    for name, service in compose["services"].items():
        for key in service.get("environment") or {}:
            found[key] = f"compose {name}"
    for owner, spec in pod_specs(manifests):
        for container in spec["containers"]:
            for entry in container.get("env", []):
                found[entry["name"]] = f"kubernetes {owner['metadata']['name']}"
    for unit in systemd_units():
        for value in systemd_values(unit, "Environment"):
            for assignment in shlex.split(value):
                found[assignment.split("=", 1)[0]] = unit.name
    for keyword, rest in dockerfile_instructions():
        if keyword == "ENV":
            for match in re.finditer(r"(\w+)=", rest):
                found[match.group(1)] = "Dockerfile"
    texts = [p.read_text(encoding="utf-8") for p in
             [*DEPLOY.rglob("*.yml"), *DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.toml"),
              DOCKERFILE, REPO / "docs" / "operations.md"]]
    for text in texts:
        for match in re.finditer(r"\bRADNODE_[A-Z0-9_]*[A-Z0-9]\b", text):
            found.setdefault(match.group(0), "text")
    return {k: v for k, v in found.items() if k.startswith(ENV_PREFIX)}


def test_every_radnode_variable_names_a_settings_key(
        compose: dict[str, Any], manifests: list[dict[str, Any]]) -> None:
    variables = all_variables(compose, manifests)
    variables.pop("RADNODE_DB_PASSWORD", None)  # compose's own interpolation variable
    assert {"RADNODE_CONFIG", "RADNODE_DATABASE__URL", "RADNODE_BROKER__URL"} <= set(variables)
    errors = [e for e in map(settings_key_error, variables) if e]
    assert not errors, errors
    assert settings_key_error("RADNODE_DICOM__PORTT") is not None
    assert settings_key_error("RADNODE_DICOM") is not None
    assert settings_key_error("RADNODE_DICOM__TLS__ENABLED") is None


def test_image_and_example_settings_load(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    instructions = dockerfile_instructions()
    config = [rest for keyword, rest in instructions if keyword == "ENV"
              and "RADNODE_CONFIG=" in rest]
    assert config
    target = re.search(r"RADNODE_CONFIG=(\S+)", config[0]).group(1)  # type: ignore[union-attr]
    copies = [rest.split() for keyword, rest in instructions if keyword == "COPY"
              and not rest.startswith("--") and rest.split()[-1] == target]
    assert copies, f"the image does not install {target}"
    image_toml = REPO / copies[0][0]
    settings = load_with(clean_env, {}, image_toml)
    assert under(settings.storage.root, ["/srv/radnode/data"])
    assert under(settings.web.secret_key_file, ["/srv/radnode/data"])
    assert under(settings.model.bundle, ["/srv/radnode/models"])
    assert settings.web.host == "0.0.0.0"
    for unit in systemd_units():
        env = dict(a.split("=", 1) for v in systemd_values(unit, "Environment")
                   for a in shlex.split(v))
        assert env[CONFIG_ENV_VAR].endswith("radnode.toml")
    load_with(clean_env, {}, EXAMPLE_TOML)


def test_dockerfile_targets_copies_and_extras() -> None:
    instructions = dockerfile_instructions()
    stages = [rest.split()[-1] for keyword, rest in instructions
              if keyword == "FROM" and " AS " in rest.upper()]
    assert {"cpu", "gpu"} <= set(stages)
    assert stages[-1] == "cpu", "the default (last) stage is the CPU image"
    runs = " ".join(rest for keyword, rest in instructions if keyword == "RUN")
    assert '".[cpu]"' in runs and '".[gpu]"' in runs
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'^cpu = \["torch==2\.13\.0"\]', pyproject, re.MULTILINE)
    ignore = (DEPLOY / "docker" / "Dockerfile.dockerignore").read_text(encoding="utf-8")
    kept = {line[1:].rstrip("/*") for line in ignore.splitlines() if line.startswith("!")}
    for keyword, rest in instructions:
        if keyword == "COPY" and not rest.startswith("--from"):
            for source in rest.split()[:-1]:
                assert (REPO / source).exists(), source
                assert source.rstrip("/") in kept, f"{source} is excluded from the context"


# ------------------------------------------------------------------------------------------
# systemd
# ------------------------------------------------------------------------------------------

def verify_units(units: list[Path], folder: Path) -> subprocess.CompletedProcess[str]:
    """``systemd-analyze verify`` copies of ``units`` whose radnode binary is a stub.

    The units name /opt/radnode/.venv/bin/radnode, which does not exist on a build machine;
    verify refuses a missing binary, so the copies point at an executable stub instead.
    """
    stub = folder / "radnode"
    stub.write_text("#!/bin/sh\nexit 0\n", encoding="ascii")
    stub.chmod(0o755)
    paths = []
    for unit in units:
        text = re.sub(r"/\S*/bin/radnode\b", str(stub), unit.read_text(encoding="utf-8"))
        copy_path = folder / unit.name
        copy_path.write_text(text, encoding="utf-8")
        paths.append(str(copy_path).replace("@.service", "@0.service"))
    return subprocess.run([_tool("systemd-analyze"), "verify", "--man=no", *paths],
                          capture_output=True, text=True, timeout=120, check=False)


def test_systemd_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    units = systemd_units()
    assert {u.name for u in units} == {"radnode.service", "radnode-worker@.service"}
    result = verify_units(units, tmp_path)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), \
        result.stdout + result.stderr


def test_systemd_verify_reports_a_broken_unit(tmp_path: Path) -> None:
    broken = tmp_path / "in" / "radnode.service"
    broken.parent.mkdir()
    broken.write_text((SYSTEMD_DIR / "radnode.service").read_text(encoding="utf-8")
                      .replace("RestartSec=", "RestartSecs="), encoding="utf-8")
    out = tmp_path / "out"
    out.mkdir()
    result = verify_units([broken], out)
    assert result.returncode != 0 or "RestartSecs" in result.stdout + result.stderr


# ------------------------------------------------------------------------------------------
# Secure defaults
# ------------------------------------------------------------------------------------------

def shipped_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Settings]:
    """The settings of every shipped configuration: example, compose, Kubernetes, image."""
    configmap = by_kind([d for p in k8s_files() for d in yaml.safe_load_all(
        p.read_text(encoding="utf-8")) if d], "ConfigMap")["radnode-config"]
    k8s_toml = tmp_path / "k8s.toml"
    k8s_toml.write_text(configmap["data"]["radnode.toml"], encoding="utf-8")
    files = {"example": EXAMPLE_TOML, "compose": COMPOSE_DIR / "radnode.toml",
             "kubernetes": k8s_toml, "image": DEPLOY / "docker" / "radnode.toml"}
    return {name: load_with(monkeypatch, {}, path) for name, path in files.items()}


def test_shipped_configurations_name_their_aes_with_separate_permissions(
        clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No shipped configuration is open to any AE: each names its peers, among them one
    that may store but not query and one that may query but not store; the site
    configurations speak DICOM only over TLS with client certificates."""
    for name, settings in shipped_settings(clean_env, tmp_path).items():
        dicom = settings.dicom
        assert dicom.peers, f"{name}: no [[dicom.peers]]: any AE could query"
        assert not dicom.allowed_calling_aes, f"{name}: a plain allow-list grants everything"
        assert any(p.store and not p.query and not p.retrieve for p in dicom.peers), name
        assert any(p.query and not p.store for p in dicom.peers), name
        if name != "image":
            assert dicom.tls.enabled and dicom.tls.require_client_cert, name
            assert settings.web.secure_cookies, name


def published_port(port: str | dict[str, Any]) -> tuple[str, int]:
    """(host address, container port) of a compose port, in either syntax."""
    if isinstance(port, dict):
        return str(port.get("host_ip", "0.0.0.0")), int(port["target"])
    parts = str(port).split("/")[0].split(":")
    return (parts[0] if len(parts) == 3 else "0.0.0.0"), int(parts[-1])


def test_web_app_is_reachable_only_through_tls(
        compose: dict[str, Any], manifests: list[dict[str, Any]],
        clean_env: pytest.MonkeyPatch) -> None:
    """Example: bound to loopback, behind the host's proxy. Compose: published on the
    host's loopback only. Kubernetes: a ClusterIP Service, exposed by a TLS Ingress."""
    assert load_with(clean_env, {}, EXAMPLE_TOML).web.host == "127.0.0.1"
    published = [published_port(p) for p in compose["services"]["node"]["ports"]]
    web = [host for host, target in published if target == 8080]
    assert web == ["127.0.0.1"], published
    services = by_kind(manifests, "Service")
    assert services["radnode-web"]["spec"]["type"] == "ClusterIP"
    exposed = [s for s in services.values() if any(
        port.get("targetPort") == "http" for port in s["spec"]["ports"])]
    assert [s["metadata"]["name"] for s in exposed] == ["radnode-web"]
    ingress = by_kind(manifests, "Ingress")["radnode-web"]
    hosts = {h for t in ingress["spec"]["tls"] for h in t["hosts"]}
    assert {r["host"] for r in ingress["spec"]["rules"]} <= hosts


def test_node_memory_is_capped(compose: dict[str, Any],
                               manifests: list[dict[str, Any]]) -> None:
    """The node runs under a memory ceiling everywhere it is shipped."""
    assert compose["services"]["node"].get("mem_limit")
    node = by_kind(manifests, "Deployment")["radnode-node"]
    assert node["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"]
    unit = next(u for u in systemd_units() if u.name == "radnode.service")
    assert systemd_values(unit, "MemoryMax")

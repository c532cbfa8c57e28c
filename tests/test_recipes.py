"""The deployment recipes, checked offline: integrations/compose, integrations/k8s, integrations/fleet.

* Every Kubernetes manifest validates in strict mode (unknown fields fail) against the
  schemas of a pinned oldest and newest Kubernetes version (``kubernetes-validate``'s own
  copies, no network), and what the manifests name exists: Service selectors and ports,
  Secret keys, the ConfigMap, the HPA's target, the GPU request.
* The compose file validates against the Compose specification's JSON schema (the copy
  ``check-jsonschema`` ships).
* Both mount ``integrations/fleet/proxy-config.yaml``, the file the fleet test runs: compose
  by path, Kubernetes as a ConfigMap holding the same bytes; each sets every variable that
  config reads, its addresses name the recipe's own services, and ``atlas-middleware``'s
  start-up check accepts the atlas configuration the replicas will load.
* Probes and health checks ask for routes the real proxy serves.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
FLEET = ROOT / "integrations" / "fleet"
COMPOSE = ROOT / "integrations" / "compose" / "compose.yaml"
K8S = ROOT / "integrations" / "k8s"
PROXY_CONFIG = FLEET / "proxy-config.yaml"
K8S_VERSIONS = ("1.30", "1.37")  # the oldest Kubernetes still commonly run, and the newest schema
# Variables the atlas section leaves to each recipe (addresses and the password they hold).
ATLAS_ENV = {"ATLAS_TEACHER_API_BASE", "ATLAS_LEDGER", "ATLAS_STATE"}
RECIPES = ["compose", "compose-defaults", "k8s"]


def manifests() -> list[tuple[Path, dict[str, Any]]]:
    paths = sorted(K8S.glob("*.yaml")) + [ROOT / "integrations" / "vllm" / "k8s.yaml"]
    return [(p, doc) for p in paths for doc in yaml.safe_load_all(p.read_text()) if doc]


def resource(kind: str, name: str, docs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    docs = docs if docs is not None else [d for p, d in manifests() if p.parent == K8S]
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name} in integrations/k8s"
    return found[0]


def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def compose_proxies(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in data["services"].items() if n.startswith("proxy-")}


def env_references(node: Any) -> set[str]:
    """The ``os.environ/NAME`` values LiteLLM resolves in a proxy config."""
    if isinstance(node, dict):
        return set().union(*(env_references(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(env_references(v) for v in node))
    if isinstance(node, str) and node.startswith("os.environ/"):
        return {node.removeprefix("os.environ/")}
    return set()


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?message}``."""
    def one(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if env.get(name):
            return env[name]
        if op == ":-":
            return arg or ""
        raise AssertionError(f"compose needs {name}: {arg}")
    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", one, value)


def compose_env(service: dict[str, Any], dotenv: dict[str, str]) -> dict[str, str]:
    return {k: interpolate(str(v), dotenv) for k, v in service["environment"].items()}


def k8s_env(container: dict[str, Any], secret: dict[str, Any]) -> dict[str, str]:
    """A container's environment as the kubelet builds it: Secret keys, then ``$(VAR)``."""
    env: dict[str, str] = {}
    for var in container["env"]:
        if "valueFrom" in var:
            ref = var["valueFrom"]["secretKeyRef"]
            assert ref["name"] == secret["metadata"]["name"]
            env[var["name"]] = secret["stringData"][ref["key"]]
        else:
            env[var["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], var["value"])
    return env


def example_dotenv() -> dict[str, str]:
    lines = (COMPOSE.parent / "example.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def proxy_container() -> dict[str, Any]:
    deployment = resource("Deployment", "atlas-proxy")
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def url_path(command: list[str] | str) -> str:
    text = " ".join(command) if isinstance(command, list) else command
    found = re.findall(r"https?://[^'\" ]+", text)
    assert len(found) == 1, text
    return urlsplit(found[0]).path


# --- Kubernetes -------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(
    ("path", "doc"), manifests(),
    ids=[f"{p.parent.name}/{p.name}:{d['kind']}/{d['metadata']['name']}" for p, d in manifests()])
def test_k8s_manifest_validates_strictly(path: Path, doc: dict[str, Any], version: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    # A kind without a schema is an error here (the CLI only warns).
    kubernetes_validate.validate(doc, version, strict=True)


def test_strict_validation_refuses_a_misspelt_field() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    doc = json.loads(json.dumps(resource("Deployment", "atlas-proxy")))
    container = doc["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(doc, K8S_VERSIONS[-1], strict=True)


def test_k8s_recipe_has_every_piece_of_the_fleet() -> None:
    docs = [d for p, d in manifests() if p.parent == K8S]
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert kinds == {
        ("Deployment", "atlas-proxy"), ("Service", "atlas-proxy"),
        ("HorizontalPodAutoscaler", "atlas-proxy"), ("ConfigMap", "atlas-proxy-config"),
        ("Secret", "atlas-proxy"),
        ("Deployment", "atlas-redis"), ("Service", "atlas-redis"),
        ("StatefulSet", "atlas-postgres"), ("Service", "atlas-postgres"),
        ("Deployment", "atlas-teacher"), ("Service", "atlas-teacher"),
    }
    hpa = resource("HorizontalPodAutoscaler", "atlas-proxy", docs)
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "atlas-proxy")
    assert hpa["spec"]["minReplicas"] >= 2
    # A CPU utilisation target needs a CPU request on every container it averages.
    assert {m["resource"]["name"] for m in hpa["spec"]["metrics"]} == {"cpu"}
    assert proxy_container()["resources"]["requests"]["cpu"]
    teacher = resource("Deployment", "atlas-teacher", docs)["spec"]["template"]["spec"]["containers"][0]
    assert str(teacher["resources"]["requests"]["nvidia.com/gpu"]) == "1"
    assert str(teacher["resources"]["limits"]["nvidia.com/gpu"]) == "1"


def test_k8s_names_resolve_within_the_recipe() -> None:
    docs = [d for p, d in manifests() if p.parent == K8S]
    workloads = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    for workload in workloads:
        spec = workload["spec"]
        labels = spec["template"]["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items(), workload["metadata"]["name"]
        if workload["kind"] == "StatefulSet":
            resource("Service", spec["serviceName"], docs)
        for volume in spec["template"]["spec"].get("volumes", []):
            if "configMap" in volume:
                resource("ConfigMap", volume["configMap"]["name"], docs)
    for service in (d for d in docs if d["kind"] == "Service"):
        selected = [w for w in workloads
                    if service["spec"]["selector"].items() <= w["spec"]["template"]["metadata"]["labels"].items()]
        assert len(selected) == 1, f"Service {service['metadata']['name']} selects {len(selected)} workloads"
        ports = [p for c in selected[0]["spec"]["template"]["spec"]["containers"] for p in c["ports"]]
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert any(target in (p["containerPort"], p.get("name")) for p in ports), (
                f"Service {service['metadata']['name']} targets port {target!r}, which no container declares")
    secret = resource("Secret", "atlas-proxy", docs)
    for workload in workloads:
        for container in workload["spec"]["template"]["spec"]["containers"]:
            for var in container.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == "atlas-proxy" and ref["key"] in secret["stringData"], var


def test_configmap_is_the_fleet_config_byte_for_byte() -> None:
    configmap = resource("ConfigMap", "atlas-proxy-config")
    assert configmap["data"] == {
        "proxy-config.yaml": PROXY_CONFIG.read_text(),
        "atlas_hooks.py": (FLEET / "atlas_hooks.py").read_text(),
    }
    container = proxy_container()
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    # The image's entrypoint runs /etc/atlas/proxy-config.yaml; LiteLLM finds atlas_hooks.py beside it.
    assert mounts["config"] == "/etc/atlas"
    assert "--config" not in container.get("args", [])
    dockerfile = (FLEET / "Dockerfile").read_text()
    assert '"--config", "/etc/atlas/proxy-config.yaml"' in dockerfile


def test_proxy_pods_roll_when_the_config_changes() -> None:
    spec = importlib.util.spec_from_file_location("render_configmap", K8S / "render_configmap.py")
    assert spec is not None and spec.loader is not None
    render = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render)
    digest = hashlib.sha256()
    for name in ("proxy-config.yaml", "atlas_hooks.py"):
        digest.update(name.encode() + b"\0" + (FLEET / name).read_bytes() + b"\0")
    annotations = resource("Deployment", "atlas-proxy")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["atlas-middleware/config-sha256"] == digest.hexdigest() == render.config_sha256()
    assert render.configmap() == (K8S / "configmap.yaml").read_text(), "run integrations/k8s/render_configmap.py"
    assert render.main(["--check"]) == 0


def test_image_installs_extras_the_package_has() -> None:
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    installed = re.findall(r'pip install "\.\[([\w,]+)\]"', (FLEET / "Dockerfile").read_text())
    assert len(installed) == 1
    assert {"proxy", "postgres", "redis"} <= set(installed[0].split(",")) <= set(extras)


def test_fleet_hook_module_is_the_bundled_one() -> None:
    assert (FLEET / "atlas_hooks.py").read_bytes() == (
        ROOT / "integrations" / "litellm_proxy" / "atlas_hooks.py").read_bytes()


# --- Compose ------------------------------------------------------------------------------


def test_compose_file_validates_against_the_compose_spec() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    pytest.importorskip("check_jsonschema")
    schema = json.loads((files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json").read_text())
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose())]
    assert errors == []
    broken = compose()
    broken["services"]["lb"]["helthcheck"] = broken["services"]["redis"]["healthcheck"]
    assert any("helthcheck" in e.message for e in validator.iter_errors(broken))


def test_compose_recipe_has_every_piece_of_the_fleet() -> None:
    data = compose()
    services = data["services"]
    proxies = compose_proxies(data)
    assert len(proxies) >= 2
    for name, proxy in proxies.items():
        mounts = {(COMPOSE.parent / v.split(":")[0]).resolve(): v.split(":")[1] for v in proxy["volumes"]}
        assert mounts[PROXY_CONFIG] == "/etc/atlas/proxy-config.yaml", name
        assert mounts[FLEET / "atlas_hooks.py"] == "/etc/atlas/atlas_hooks.py", name
        assert proxy["build"]["dockerfile"] == "integrations/fleet/Dockerfile"
        assert (COMPOSE.parent / proxy["build"]["context"]).resolve() == ROOT
        assert {"redis", "postgres"} <= set(proxy["depends_on"])
    lb = services["lb"]
    assert {(COMPOSE.parent / v.split(":")[0]).resolve() for v in lb["volumes"]} == {FLEET / "haproxy.cfg"}
    servers = {v.split(":")[0] for k, v in lb["environment"].items() if k.startswith("FLEET_PROXY_")}
    assert servers == set(proxies)
    for name in ("redis", "postgres", "atlas-teacher", *proxies):
        assert services[name]["healthcheck"]["test"], name
    gpus = services["atlas-teacher"]["deploy"]["resources"]["reservations"]["devices"]
    assert gpus == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]


# --- The proxy config every recipe mounts --------------------------------------------------


def recipe_env(recipe: str) -> dict[str, str]:
    """The proxies' environment: compose's with the example .env, or with only the variables
    it requires (the file's defaults for the rest); the pods' as the kubelet builds it."""
    if recipe.startswith("compose"):
        dotenv = example_dotenv()
        if recipe == "compose-defaults":
            required = set(re.findall(r"\$\{(\w+):\?", COMPOSE.read_text()))
            dotenv = {k: v for k, v in dotenv.items() if k in required}
        services = compose_proxies(compose())
        envs = [compose_env(s, dotenv) for s in services.values()]
        assert all(e == envs[0] for e in envs)
        return envs[0]
    return k8s_env(proxy_container(), resource("Secret", "atlas-proxy"))


def recipe_hosts(recipe: str) -> dict[str, set[int]]:
    """host -> ports the recipe serves on its network."""
    if recipe.startswith("compose"):
        ports = {"redis": {6379}, "postgres": {5432}, "atlas-teacher": {8000}}
        return {name: ports.get(name, set()) for name in compose()["services"]}
    services = [d for p, d in manifests() if p.parent == K8S and d["kind"] == "Service"]
    return {s["metadata"]["name"]: {p["port"] for p in s["spec"]["ports"]} for s in services}


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_sets_every_variable_the_proxy_config_reads(recipe: str) -> None:
    env = recipe_env(recipe)
    wanted = env_references(yaml.safe_load(PROXY_CONFIG.read_text())) | ATLAS_ENV
    assert {"LITELLM_MASTER_KEY", "STUDENT_MODEL", "STUDENT_API_BASE", "STUDENT_API_KEY"} <= wanted
    assert wanted <= set(env)
    assert env["STUDENT_MODEL"].startswith("atlas/")  # else the student is served without a teacher
    hosts = recipe_hosts(recipe)
    for name, scheme in (("ATLAS_TEACHER_API_BASE", "http"), ("ATLAS_LEDGER", "postgresql"),
                         ("ATLAS_STATE", "redis")):
        url = urlsplit(env[name])
        assert url.scheme == scheme, env[name]
        assert url.hostname in hosts and url.port in hosts[url.hostname], (
            f"{recipe}: {name} points at {url.hostname}:{url.port}, which the recipe does not serve")


@pytest.mark.parametrize("recipe", RECIPES)
def test_proxy_start_up_check_accepts_the_recipe(recipe: str, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from atlas_middleware.proxy.launcher import ProxySettings, check_atlas_config, proxy_env

    env = recipe_env(recipe)
    # The recipe's database host does not resolve here: the ledger check only warns about a
    # Postgres server it cannot reach, so the URL is still parsed and the driver loaded.
    pytest.importorskip("psycopg")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    settings = ProxySettings(config=PROXY_CONFIG).check()
    full = proxy_env(settings, base=env)
    assert full["ATLAS_CONFIG"] == str(PROXY_CONFIG.resolve())
    config = check_atlas_config(settings, full)
    assert config is not None
    assert config.teacher.model == "hosted_vllm/Arc-Intelligence/ATLAS-8B-Thinking"
    assert config.teacher.api_base == env["ATLAS_TEACHER_API_BASE"]
    assert config.ledger.url == env["ATLAS_LEDGER"]
    if "state" in type(config).model_fields:  # the shared state backend
        assert config.state.url == env["ATLAS_STATE"]


def test_teachers_serve_what_the_config_asks_for() -> None:
    from atlas_middleware.cli.teacher import ServeSettings

    atlas = yaml.safe_load(PROXY_CONFIG.read_text())["atlas"]
    served = atlas["teacher"].removeprefix("hosted_vllm/")
    recommended = {a for a in ServeSettings().command() if a.startswith("--")}
    teacher = compose()["services"]["atlas-teacher"]
    k8s_teacher = resource("Deployment", "atlas-teacher")["spec"]["template"]["spec"]["containers"][0]
    for entry, args in ((teacher["entrypoint"], teacher["command"]), (k8s_teacher["command"], k8s_teacher["args"])):
        assert entry == ["vllm", "serve"]
        assert f"--served-model-name={served}" in args
        assert "--port=8000" in args
        assert recommended - {"--served-model-name"} <= {a.split("=")[0] for a in args}
    assert urlsplit(atlas["teacher_api_base"]).hostname == "atlas-teacher"


# --- Health checks -----------------------------------------------------------------------


def proxy_routes() -> set[str]:
    """The GET routes of the installed LiteLLM proxy's health module, read from its source
    (importing it loads the whole proxy: seconds)."""
    import ast

    spec = importlib.util.find_spec("litellm")  # a top-level package: found, not imported
    assert spec is not None and spec.origin is not None
    tree = ast.parse((Path(spec.origin).parent / "proxy" / "health_endpoints" / "_health_endpoints.py").read_text())
    return {
        dec.args[0].value
        for node in ast.walk(tree) if isinstance(node, ast.AsyncFunctionDef | ast.FunctionDef)
        for dec in node.decorator_list
        if isinstance(dec, ast.Call) and isinstance(dec.func, ast.Attribute) and dec.func.attr == "get"
        and isinstance(dec.func.value, ast.Name) and dec.func.value.id == "router"
        and dec.args and isinstance(dec.args[0], ast.Constant) and isinstance(dec.args[0].value, str)
    }


def test_probes_ask_for_routes_the_proxy_serves() -> None:
    routes = proxy_routes()
    assert {"/health/readiness", "/health/liveliness", "/health/liveness"} <= routes
    container = proxy_container()
    # Whatever sends traffic asks for readiness: 503 while the atlas configuration cannot be
    # loaded (plain /health is the authenticated model check: a 401 to a load balancer).
    readiness = [container["readinessProbe"]["httpGet"]["path"]]
    readiness += [url_path(s["healthcheck"]["test"]) for s in compose_proxies(compose()).values()]
    cfg = (FLEET / "haproxy.cfg").read_text()
    readiness += re.findall(r"^\s*option httpchk GET (\S+)$", cfg, re.MULTILINE)
    assert readiness == ["/health/readiness"] * (2 + len(compose_proxies(compose())))
    # Whatever restarts a replica asks only whether the server answers.
    liveness = [container[p]["httpGet"]["path"] for p in ("livenessProbe", "startupProbe")]
    assert liveness == ["/health/liveliness"] * 2
    assert set(readiness + liveness) <= routes
    # Each replica's teaching-loop metrics, scraped where the hooks mount them.
    annotations = resource("Deployment", "atlas-proxy")["spec"]["template"]["metadata"]["annotations"]
    # (AtlasMetrics.mount's default path, read from the source: importing the proxy package loads LiteLLM)
    metrics = (ROOT / "atlas_middleware" / "proxy" / "metrics.py").read_text()
    assert re.findall(r'def mount\(self, app: Any, path: str = "([^"]+)"\)', metrics) == [
        annotations["prometheus.io/path"]]
    assert annotations["prometheus.io/port"] == str(container["ports"][0]["containerPort"])


def test_teacher_probes_ask_for_vllms_health_route() -> None:
    import inspect

    from atlas_middleware.cli import teacher as teacher_cli

    assert '+ "/health"' in inspect.getsource(teacher_cli)  # what `atlas-middleware teacher serve` polls
    k8s_teacher = resource("Deployment", "atlas-teacher")["spec"]["template"]["spec"]["containers"][0]
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert k8s_teacher[probe]["httpGet"]["path"] == "/health"
    assert url_path(compose()["services"]["atlas-teacher"]["healthcheck"]["test"]) == "/health"


def haproxy_env(tmp_path: Path, replicas: int) -> dict[str, str]:
    env = {"PATH": "/usr/sbin:/usr/bin:/bin", "FLEET_LB_PORT": "18080",
           "FLEET_LB_SOCKET": str(tmp_path / "admin.sock")}
    env.update({f"FLEET_PROXY_{i}": f"127.0.0.1:{4000 + i}" for i in range(1, replicas + 1)})
    return env


def test_haproxy_config_balances_round_robin_on_readiness() -> None:
    cfg = (FLEET / "haproxy.cfg").read_text()
    assert re.search(r"^\s*balance roundrobin$", cfg, re.MULTILINE)
    assert re.search(r"^\s*http-check expect status 200$", cfg, re.MULTILINE)
    servers = re.findall(r'^\s*server (\w+) "\$\{(FLEET_PROXY_\d+)\}"$', cfg, re.MULTILINE)
    assert [v for _, v in servers] == [f"FLEET_PROXY_{i}" for i in range(1, 9)]


@pytest.mark.parametrize("resolver", [None, "127.0.0.11:53"])
def test_haproxy_accepts_the_config(tmp_path: Path, resolver: str | None) -> None:
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not Path(binary).exists():
        pytest.skip("haproxy is not installed (scripts/ci-services.sh installs it)")
    env = haproxy_env(tmp_path, 3)
    if resolver:
        env["FLEET_RESOLVER"] = resolver
    done = subprocess.run([binary, "-c", "-f", str(FLEET / "haproxy.cfg")], env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    del env["FLEET_LB_PORT"]  # an unset variable is an error, not a silent default
    done = subprocess.run([binary, "-c", "-f", str(FLEET / "haproxy.cfg")], env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode != 0


def test_render_script_runs_as_documented() -> None:
    done = subprocess.run([sys.executable, str(K8S / "render_configmap.py"), "--check"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr

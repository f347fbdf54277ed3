"""The deploy files name only what exists: commands and options, routes, settings, ports.

Docker and Kubernetes are not run here; every file in ``deploy/`` is parsed and what it names is
resolved against the code: ``codat-hooks`` commands against the click group, probe paths against
the app's routes, environment variables against ``Settings``.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import click
import pytest
import yaml
from pydantic import SecretStr

from service.app import create_app
from service.cli import main
from service.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
ENV_EXAMPLE = DEPLOY / "env.example"
K8S = DEPLOY / "k8s"

SETTINGS = {name.upper() for name in Settings.model_fields}
# Whatever must never be written into a deploy file: every SecretStr setting, and the database
# URL (it carries the password).
SECRETS = {name.upper() for name, field in Settings.model_fields.items()
           if field.annotation is SecretStr} | {"DATABASE_URL"}
# Environment variables the deploy files may set that are not settings, and what reads them.
NON_SETTINGS = {
    "POSTGRES_USER": "the postgres image",
    "POSTGRES_DB": "the postgres image",
    "POSTGRES_PASSWORD": "the postgres image",
    "PATH": "the shell (the image puts its venv first)",
    "PYTHONUNBUFFERED": "python",
    "PYTHONDONTWRITEBYTECODE": "python",
    "PIP_NO_CACHE_DIR": "pip (build stage)",
    "PIP_DISABLE_PIP_VERSION_CHECK": "pip (build stage)",
}
SECRET_LIKE = SECRETS | {"POSTGRES_PASSWORD"}


# --- reading the files -------------------------------------------------------------------------

def _instructions() -> list[tuple[str, str]]:
    """The Dockerfile as (INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        result.append((keyword.upper(), arguments.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return result


def _final_stage() -> list[tuple[str, str]]:
    instructions = _instructions()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def _docker_env() -> dict[str, str]:
    values: dict[str, str] = {}
    for keyword, arguments in _final_stage():
        if keyword == "ENV":
            for pair in shlex.split(arguments):
                name, sep, value = pair.partition("=")
                assert sep, f"ENV {pair!r}: use the NAME=value form"
                values[name] = value
    return values


def _exec_form(keyword: str, arguments: str) -> list[str]:
    assert arguments.startswith("["), f"{keyword} {arguments}: use the exec (JSON) form"
    argv: list[str] = json.loads(arguments)
    return argv


@cache
def _compose() -> dict[str, Any]:
    documents = list(yaml.safe_load_all(COMPOSE.read_text()))
    assert len(documents) == 1
    compose: dict[str, Any] = documents[0]
    return compose


def _services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = _compose()["services"]
    return services


@cache
def _k8s() -> list[dict[str, Any]]:
    files = sorted(K8S.glob("*.yaml")) + sorted(K8S.glob("*.yml"))
    assert files, "no manifests in deploy/k8s"
    documents = [doc for path in files for doc in yaml.safe_load_all(path.read_text()) if doc]
    for doc in documents:
        assert {"apiVersion", "kind", "metadata"} <= doc.keys(), doc
    return documents


def _kind(kind: str) -> list[dict[str, Any]]:
    return [doc for doc in _k8s() if doc["kind"] == kind]


def _pod_specs() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, pod spec) for every Deployment and Job."""
    for doc in _k8s():
        if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield doc, doc["spec"]["template"]["spec"]
        elif doc["kind"] == "CronJob":
            yield doc, doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def _containers() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for workload, spec in _pod_specs():
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            yield workload, container


def _argv(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(part) for part in value]


def _env_file(path: Path) -> dict[str, str]:
    """NAME=value lines; each must follow a comment line saying what it is."""
    values: dict[str, str] = {}
    previous = ""
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            name, sep, value = line.partition("=")
            assert sep and re.fullmatch(r"[A-Z][A-Z0-9_]*", name), f"{path.name}:{number}: {raw!r}"
            assert name not in values, f"{path.name}:{number}: {name} is set twice"
            assert previous.startswith("#"), f"{path.name}:{number}: {name} has no comment line"
            values[name] = value
        previous = line
    return values


def _compose_env(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.partition("=")[::2] for item in environment)
    return {str(k): "" if v is None else str(v) for k, v in environment.items()}


def _compose_env_files(service: dict[str, Any]) -> list[Path]:
    files = service.get("env_file") or []
    files = [files] if isinstance(files, str | dict) else files
    return [DEPLOY / (f["path"] if isinstance(f, dict) else f) for f in files]


# --- what the files name -----------------------------------------------------------------------

def _commands() -> list[tuple[str, list[str]]]:
    """Every ``codat-hooks ...`` invocation in the deploy files, with where it comes from."""
    found: list[tuple[str, list[str]]] = []
    for keyword, arguments in _instructions():
        if keyword in ("CMD", "ENTRYPOINT", "RUN") and "codat-hooks" in arguments:
            found.append((f"Dockerfile {keyword}", _exec_form(keyword, arguments)))
    for name, service in _services().items():
        found.append((f"compose {name}", _argv(service.get("command"))))
    for workload, container in _containers():
        argv = _argv(container.get("command")) + _argv(container.get("args"))
        found.append((f"k8s {workload['metadata']['name']}/{container['name']}", argv))
    # Commands quoted in comments (`codat-hooks db upgrade`) must be real too.
    for path in [DOCKERFILE, COMPOSE, ENV_EXAMPLE, *sorted(K8S.glob("*.y*ml"))]:
        for quoted in re.findall(r"`(codat-hooks [^`]+)`", path.read_text()):
            found.append((f"{path.name} comment", shlex.split(quoted)))
    return [(where, argv) for where, argv in found if argv[:1] == ["codat-hooks"]]


def _resolve(argv: list[str]) -> tuple[str, dict[str, Any]]:
    """The command path ('db upgrade') and parsed options; fails on an unknown command/option."""
    assert argv[0] == "codat-hooks"
    command: click.Command = main
    ctx = click.Context(main, info_name="codat-hooks")
    rest, path = argv[1:], []
    while isinstance(command, click.Group):
        assert rest, f"{shlex.join(argv)} names the group {command.name!r}, not a command"
        name, *rest = rest
        sub = command.get_command(ctx, name)
        assert sub is not None, f"{shlex.join(argv)}: no command {name!r} in {command.name!r}"
        path.append(name)
        if isinstance(sub, click.Group):
            ctx = click.Context(sub, info_name=name, parent=ctx)
        command = sub
    try:
        leaf = command.make_context(path[-1], list(rest), parent=ctx)
    except click.UsageError as exc:
        pytest.fail(f"{shlex.join(argv)}: {exc.format_message()}")
    return " ".join(path), leaf.params


def _runs(argv: list[str], command: str) -> bool:
    return argv[:1] == ["codat-hooks"] and _resolve(argv)[0] == command


def _serve_port() -> int:
    ports = {_resolve(argv)[1]["port"] for _, argv in _commands() if _runs(argv, "serve")}
    assert len(ports) == 1, f"serve is started on different ports: {ports}"
    return ports.pop()


def _urls(text: str) -> list[Any]:
    return [urlsplit(url) for url in re.findall(r"https?://[^\s'\"]+", text)]


@pytest.fixture
def route_paths(tmp_path: Path) -> set[str]:
    secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    settings = load_settings(codat_webhook_secrets=secret, codat_api_key="x",
                             database_url=f"sqlite:///{tmp_path}/x.db", worker_enabled=False)
    app = create_app(settings)
    return {route.path for route in app.routes}


# --- commands ----------------------------------------------------------------------------------

def test_every_codat_hooks_command_is_real() -> None:
    commands = _commands()
    assert len(commands) >= 6  # Dockerfile, compose (migrate, receivers, worker), k8s (3)
    for _where, argv in commands:
        _resolve(argv)  # fails naming the command or option that does not exist


def test_the_resolver_refuses_what_does_not_exist() -> None:
    with pytest.raises(AssertionError, match="no command 'migrate'"):
        _resolve(["codat-hooks", "migrate"])
    with pytest.raises(AssertionError, match="names the group"):
        _resolve(["codat-hooks", "db"])
    with pytest.raises(pytest.fail.Exception, match="--workers"):
        _resolve(["codat-hooks", "serve", "--workers", "4"])
    assert _resolve(["codat-hooks", "serve", "--no-migrate"])[1]["migrate"] is False


def test_migrations_run_once_before_receivers_and_workers() -> None:
    services = _services()
    assert _runs(_argv(services["migrate"]["command"]), "db upgrade")
    assert services["migrate"].get("restart", "no") == "no"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    jobs = _kind("Job")
    assert jobs, "no migration Job"
    assert all(_runs(_argv(c.get("command")) + _argv(c.get("args")), "db upgrade")
               for job in jobs for c in job["spec"]["template"]["spec"]["containers"])
    for name, service in services.items():
        argv = _argv(service.get("command"))
        if _runs(argv, "serve") or _runs(argv, "worker"):
            assert service["depends_on"]["migrate"]["condition"] == \
                "service_completed_successfully", name


def test_compose_runs_two_receivers_without_their_own_worker_and_one_worker() -> None:
    receivers = {name: s for name, s in _services().items()
                 if _runs(_argv(s.get("command")), "serve")}
    replicas = sum(s.get("deploy", {}).get("replicas", 1) for s in receivers.values())
    assert replicas >= 2
    for name, service in receivers.items():
        assert _resolve(_argv(service["command"]))[1]["migrate"] is False, name
        assert _compose_env(service).get("WORKER_ENABLED") == "false", name
    workers = [s for s in _services().values() if _runs(_argv(s.get("command")), "worker")]
    assert len(workers) == 1


def test_k8s_runs_receivers_without_their_own_worker_and_a_worker() -> None:
    receivers = [c for _, c in _containers() if _runs(_argv(c.get("command")), "serve")]
    assert receivers
    for container in receivers:
        assert _resolve(_argv(container["command"]))[1]["migrate"] is False
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        assert env.get("WORKER_ENABLED") == "false"
    assert any(_runs(_argv(c.get("command")), "worker") for _, c in _containers())


# --- routes and ports --------------------------------------------------------------------------

def test_every_probe_and_healthcheck_path_is_a_route(route_paths: set[str]) -> None:
    port = _serve_port()
    urls = [url for keyword, arguments in _instructions() if keyword == "HEALTHCHECK"
            for url in _urls(arguments)]
    for service in _services().values():
        urls += _urls(json.dumps(service.get("healthcheck", {}).get("test", "")))
    assert len(urls) >= 2
    for url in urls:
        assert url.path in route_paths, url.geturl()
        assert url.port == port, url.geturl()

    for _workload, container in _containers():
        named = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
        if _runs(_argv(container.get("command")) + _argv(container.get("args")), "worker"):
            continue  # its status port: checked in test_k8s_deployments_have_probes...
        for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
            probe = container.get(kind, {}).get("httpGet")
            if probe:
                assert probe["path"] in route_paths, (container["name"], kind)
                assert named.get(probe["port"], probe["port"]) == port, (container["name"], kind)


def test_ports_agree_with_serve() -> None:
    port = _serve_port()
    exposed = [arg for keyword, arguments in _final_stage() if keyword == "EXPOSE"
               for arg in arguments.split()]
    assert exposed == [str(port)], f"EXPOSE {exposed}, but serve listens on {port}"

    for name, service in _services().items():
        if _runs(_argv(service.get("command")), "serve"):
            ports = service.get("ports", [])
            assert ports, name
            for mapping in ports:
                target = mapping["target"] if isinstance(mapping, dict) else \
                    str(mapping).split("/")[0].rsplit(":", 1)[-1]
                assert int(target) == port, (name, mapping)

    receiver_ports: dict[str | int, int] = {}
    for _workload, container in _containers():
        if _runs(_argv(container.get("command")), "serve"):
            assert [p["containerPort"] for p in container["ports"]] == [port]
            receiver_ports.update({p.get("name", port): p["containerPort"]
                                   for p in container["ports"]})
            receiver_ports[port] = port
    services = _kind("Service")
    assert services
    for service in services:
        for mapping in service["spec"]["ports"]:
            assert receiver_ports.get(mapping["targetPort"]) == port, mapping
            assert mapping["port"] == 80


# --- settings ----------------------------------------------------------------------------------

def _check_names(where: str, names: set[str]) -> None:
    unknown = names - SETTINGS - NON_SETTINGS.keys()
    assert not unknown, f"{where}: not settings of service/settings.py: {sorted(unknown)}"


def _check_values(where: str, values: dict[str, str]) -> None:
    """Literal setting values are ones Settings accepts."""
    literal = {name.lower(): value for name, value in values.items()
               if name in SETTINGS and "${" not in value}
    try:
        Settings(_env_file=None, **literal)
    except ValueError as exc:
        pytest.fail(f"{where}: {exc}")


def test_env_example_lists_every_setting_with_its_default() -> None:
    values = _env_file(ENV_EXAMPLE)
    assert set(values) == SETTINGS, (
        f"missing: {sorted(SETTINGS - set(values))}; unknown: {sorted(set(values) - SETTINGS)}")
    for name in SECRETS - {"DATABASE_URL"}:
        assert values[name] == "", f"env.example ships a value for the secret {name}"
    parsed = Settings(_env_file=None, **{k.lower(): v for k, v in values.items()})
    for name, field in Settings.model_fields.items():
        default, shown = field.get_default(call_default_factory=True), getattr(parsed, name)
        if isinstance(default, SecretStr):
            default, shown = default.get_secret_value(), shown.get_secret_value()
        assert shown == default, f"env.example: {name.upper()}={values[name.upper()]!r} " \
                                 f"is not the default {default!r}"


def test_compose_sets_only_settings_and_inlines_no_secret() -> None:
    for name, service in _services().items():
        for path in _compose_env_files(service):
            assert path.is_file(), f"compose {name}: env_file {path} does not exist"
            values = _env_file(path)
            _check_names(f"compose {name} env_file", set(values))
        env = _compose_env(service)
        if name == "postgres":
            continue
        _check_names(f"compose {name}", set(env))
        _check_values(f"compose {name}", env)
        for var in SECRET_LIKE & env.keys():
            assert "${" in env[var], f"compose {name}: {var} is inlined; interpolate ${{{var}}}"
    postgres = _compose_env(_services()["postgres"])
    _check_names("compose postgres", set(postgres))
    assert "${" in postgres["POSTGRES_PASSWORD"]


def test_k8s_sets_only_settings_and_secrets_only_by_reference() -> None:
    assert not [doc for doc in _kind("Secret") if doc.get("data") or doc.get("stringData")], \
        "a Secret with values is shipped; reference it with secretKeyRef instead"
    config_maps = {doc["metadata"]["name"]: doc.get("data", {}) for doc in _kind("ConfigMap")}
    for name, data in config_maps.items():
        _check_names(f"ConfigMap {name}", set(data))
        assert not SECRET_LIKE & data.keys(), f"ConfigMap {name} holds secrets"
        _check_values(f"ConfigMap {name}", {k: str(v) for k, v in data.items()})

    for workload, container in _containers():
        where = f"{workload['metadata']['name']}/{container['name']}"
        for source in container.get("envFrom", []):
            assert source["configMapRef"]["name"] in config_maps, where
        env = container.get("env", [])
        _check_names(where, {e["name"] for e in env})
        _check_values(where, {e["name"]: str(e["value"]) for e in env if "value" in e})
        for entry in env:
            if entry["name"] in SECRET_LIKE:
                ref = entry.get("valueFrom", {}).get("secretKeyRef")
                assert "value" not in entry and ref, f"{where}: {entry['name']} is inline"
                assert ref["key"] == entry["name"], where


def test_every_secret_the_commands_need_is_referenced() -> None:
    needs = {"serve": {"DATABASE_URL", "CODAT_WEBHOOK_SECRETS", "CODAT_API_KEY"},
             "worker": {"DATABASE_URL", "CODAT_API_KEY"}, "db upgrade": {"DATABASE_URL"}}
    for workload, container in _containers():
        command = _resolve(_argv(container.get("command")) + _argv(container.get("args")))[0]
        refs = {e["name"] for e in container.get("env", []) if "valueFrom" in e}
        assert needs[command] <= refs, (workload["metadata"]["name"], needs[command] - refs)


# --- Kubernetes workloads ----------------------------------------------------------------------

def test_k8s_workloads_run_as_non_root_with_resources() -> None:
    uid = _dockerfile_uid()
    for workload, spec in _pod_specs():
        name = workload["metadata"]["name"]
        pod = spec.get("securityContext", {})
        for container in spec["containers"]:
            context = {**pod, **container.get("securityContext", {})}
            assert context.get("runAsNonRoot") is True, name
            assert context.get("runAsUser", uid) == uid, name
            assert container.get("resources", {}).get("requests"), name
            assert container.get("image"), name


def test_k8s_deployments_have_probes_and_time_to_drain() -> None:
    deployments = _kind("Deployment")
    assert deployments
    for deployment in deployments:
        name, spec = deployment["metadata"]["name"], deployment["spec"]["template"]["spec"]
        # SIGTERM drains in-flight requests (uvicorn: 20 s), after a preStop pause.
        assert spec.get("terminationGracePeriodSeconds", 30) >= 30, name
        for container in spec["containers"]:
            argv = _argv(container.get("command")) + _argv(container.get("args"))
            if _runs(argv, "worker"):
                # The worker's status port: liveness on /healthz, which its status app serves.
                port = argv[argv.index("--port") + 1]
                assert [p["containerPort"] for p in container["ports"]] == [int(port)], name
                assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", name
                assert "/healthz" in _worker_status_paths(), name
                continue
            assert _runs(argv, "serve"), (name, argv)
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", name
            assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", name
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= labels.items(), name


def _worker_status_paths() -> set[str]:
    from service.worker_process import status_app
    app = status_app(None, None, None, stale_after=1)  # type: ignore[arg-type]
    return {route.path for route in app.routes}  # type: ignore[attr-defined]


def _receiver_deployments() -> list[dict[str, Any]]:
    return [d for d in _kind("Deployment")
            if any(_runs(_argv(c.get("command")), "serve")
                   for c in d["spec"]["template"]["spec"]["containers"])]


def test_receivers_have_two_replicas_a_disruption_budget_and_a_service() -> None:
    receivers = _receiver_deployments()
    assert len(receivers) == 1
    receiver = receivers[0]
    assert receiver["spec"]["replicas"] >= 2
    labels = receiver["spec"]["template"]["metadata"]["labels"]
    others = [d["spec"]["template"]["metadata"]["labels"] for d in _kind("Deployment")
              if d is not receiver]

    budgets = _kind("PodDisruptionBudget")
    assert budgets
    for budget in budgets:
        selector = budget["spec"]["selector"]["matchLabels"]
        assert selector.items() <= labels.items(), "the budget does not select the receivers"
        assert not any(selector.items() <= other.items() for other in others)
        assert budget["spec"]["minAvailable"] == 1
    for service in _kind("Service"):
        selector = service["spec"]["selector"]
        assert selector.items() <= labels.items(), "the Service does not select the receivers"
        assert not any(selector.items() <= other.items() for other in others)


# --- Dockerfile --------------------------------------------------------------------------------

def _dockerfile_uid() -> int:
    users = [arguments for keyword, arguments in _final_stage() if keyword == "USER"]
    assert users, "the image runs as root: no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit(), "USER should be numeric, so runAsNonRoot can check it"
    return int(uid)


def test_dockerfile_is_multi_stage_slim_and_non_root() -> None:
    instructions = _instructions()
    froms = [arguments.split()[0] for keyword, arguments in instructions if keyword == "FROM"]
    assert len(froms) >= 2 and all(f.startswith("python:3.11-slim") for f in froms)
    final = _final_stage()
    assert any(k == "COPY" and a.startswith("--from=") for k, a in final)
    assert _dockerfile_uid() != 0
    healthchecks = [a for k, a in final if k == "HEALTHCHECK"]
    assert len(healthchecks) == 1, "one HEALTHCHECK in the final stage"
    assert "/healthz" in healthchecks[0]
    assert "urllib" in healthchecks[0], "slim images have no curl"
    cmd = [a for k, a in final if k == "CMD"]
    assert cmd and _runs(_exec_form("CMD", cmd[-1]), "serve")
    installs = [a for k, a in instructions if k == "RUN" and "pip install" in a]
    assert installs and all("[dev]" not in a for a in installs)


def test_dockerfile_copies_what_the_package_needs() -> None:
    copied = set()
    for keyword, arguments in _instructions():
        if keyword == "COPY" and not arguments.startswith("--from="):
            *sources, _target = shlex.split(arguments)
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: not in the build context"
                copied.add(source.rstrip("/"))
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {pattern.rstrip("*") for pattern in include}
    needed = packages | {"pyproject.toml", pyproject["project"]["readme"]}
    assert needed <= copied, f"the build stage does not COPY {sorted(needed - copied)}"


def test_dockerfile_env_and_sqlite_volume() -> None:
    env = _docker_env()
    _check_names("Dockerfile ENV", set(env))
    url = env["DATABASE_URL"]
    _check_values("Dockerfile ENV", env)
    assert url.startswith("sqlite:////"), "the image's SQLite file needs an absolute path"
    volumes = [v for k, a in _final_stage() if k == "VOLUME" for v in _argv(a)]
    database_dir = PurePosixPath(url.removeprefix("sqlite:///")).parent
    assert str(database_dir) in volumes


# --- compose -----------------------------------------------------------------------------------

def test_compose_postgres_is_15_with_a_healthcheck_and_a_named_volume() -> None:
    compose, postgres = _compose(), _services()["postgres"]
    assert str(postgres["image"]).startswith("postgres:15")
    assert "pg_isready" in _argv(postgres["healthcheck"]["test"])
    volume = postgres["volumes"][0].split(":")[0]
    assert volume in compose["volumes"]


def test_compose_builds_from_the_dockerfile() -> None:
    for name, service in _services().items():
        build = service.get("build")
        if build:
            context = (DEPLOY / build["context"]).resolve()
            assert (context / build.get("dockerfile", "Dockerfile")).resolve() == DOCKERFILE, name


def test_compose_healthchecks_fit_each_command() -> None:
    """The image's HEALTHCHECK probes `serve`; other commands from the image must turn it off."""
    ours = {s.get("image") for s in _services().values() if s.get("build")}
    for name, service in _services().items():
        if not service.get("build") and service.get("image") not in ours:
            continue
        argv, check = _argv(service.get("command")), service.get("healthcheck", {})
        if _runs(argv, "serve"):
            assert "/readyz" in json.dumps(check.get("test")), name
        else:
            assert check.get("disable") is True, f"compose {name}: the image's /healthz check " \
                                                 "would mark it unhealthy"

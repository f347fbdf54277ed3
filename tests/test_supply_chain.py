"""The supply chain, checked statically (no Docker here, no network): the hash-pinned lock the
image installs matches pyproject.toml, dependency floors sit above the advisories, the base
image is pinned by digest, the build context keeps secrets out, and Kubernetes pods get no
service-account token and a NetworkPolicy."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.test_deploy import _instructions, _k8s, _pod_specs

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "deploy" / "requirements.lock"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
DIGEST = re.compile(r"^python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}$")
# Published advisories and the first version without them.
ADVISORIES = {"starlette": ("0.49.1", "CVE-2025-54121, CVE-2025-62727"),
              "orjson": ("3.11.6", "CVE-2025-67221")}
OURS = "codat-hooks (pyproject.toml)"


@dataclass
class Pin:
    name: str
    version: Version
    marker: str
    hashes: list[str] = field(default_factory=list)
    via: list[str] = field(default_factory=list)

    def applies(self) -> bool:  # on the image: CPython 3.11 on Linux, like this machine
        return not self.marker or Requirement(f"x; {self.marker}").marker.evaluate()  # type: ignore[union-attr]


def _lock() -> list[Pin]:
    pins: list[Pin] = []
    in_via = False
    for raw in LOCK.read_text().splitlines():
        line = raw.strip()
        if match := re.match(r"^([A-Za-z0-9_.\-]+)==([^ ;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$", raw):
            pins.append(Pin(canonicalize_name(match[1]), Version(match[2]), match[3] or ""))
            in_via = False
        elif line.startswith("--hash=sha256:"):
            pins[-1].hashes.append(line.removeprefix("--hash=sha256:").rstrip(" \\"))
        elif line.startswith("# via"):
            rest = line.removeprefix("# via").strip()
            pins[-1].via += [rest] if rest else []
            in_via = True
        elif in_via and line.startswith("#   "):
            pins[-1].via.append(line.removeprefix("#   ").strip())
    return pins


def _applicable() -> dict[str, Pin]:
    return {p.name: p for p in _lock() if p.applies()}


def _direct() -> list[Requirement]:
    return [Requirement(r) for r in PYPROJECT["project"]["dependencies"]] + \
        [Requirement(r) for r in PYPROJECT["build-system"]["requires"]]


def test_every_locked_package_is_pinned_with_hashes() -> None:
    pins = _lock()
    assert len(pins) > 20
    for pin in pins:
        assert pin.hashes, f"{pin.name} has no --hash"
        assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in pin.hashes), pin.name


def test_the_lock_satisfies_pyproject_and_pins_nothing_it_no_longer_asks_for() -> None:
    pins = _applicable()
    for requirement in _direct():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is in pyproject.toml but not in the lock: run " \
                             "deploy/scripts/lock"
        assert requirement.specifier.contains(pins[name].version, prereleases=True), \
            f"locked {name}=={pins[name].version} does not satisfy {requirement}"
        for extra in requirement.extras:  # uvicorn[standard]: what the extra brings is locked
            for raw in importlib.metadata.requires(requirement.name) or []:
                needed = Requirement(raw)
                if needed.marker and needed.marker.evaluate({"extra": extra}) \
                        and not needed.marker.evaluate({"extra": ""}):
                    assert canonicalize_name(needed.name) in pins, (requirement, needed)
    ours = {p.name for p in _lock() if OURS in p.via}
    project = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    assert ours == {canonicalize_name(r.name) for r in project}, \
        "the lock is stale (it pins direct dependencies pyproject.toml no longer lists)"


@pytest.mark.parametrize("package", sorted(ADVISORIES))
def test_floors_are_above_the_advisories(package: str) -> None:
    fixed, advisories = ADVISORIES[package]
    [requirement] = [r for r in _direct() if canonicalize_name(r.name) == package]
    release = Version(fixed).release
    last_vulnerable = (*release[:-1], release[-1] - 1)
    assert not requirement.specifier.contains(".".join(map(str, last_vulnerable))), advisories
    assert requirement.specifier.contains(fixed)
    assert _applicable()[package].version >= Version(fixed), advisories


# --- the image ----------------------------------------------------------------------------------

def test_the_base_image_is_pinned_by_digest() -> None:
    froms = [arguments.split()[0] for keyword, arguments in _instructions() if keyword == "FROM"]
    assert len(froms) >= 2
    assert all(DIGEST.match(f) for f in froms), froms
    assert len(set(froms)) == 1, "build and runtime stages on the same base"


def test_the_image_installs_exactly_the_lock() -> None:
    runs = [a for k, a in _instructions() if k == "RUN" and "pip install" in a]
    copies = [a for k, a in _instructions() if k == "COPY"]
    assert any(a.split()[0] == "deploy/requirements.lock" for a in copies)
    assert runs[0].endswith("pip install --require-hashes --no-deps -r requirements.lock")
    assert all("--no-deps" in run for run in runs), "every install is of pinned packages only"


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore matching, enough for these patterns (last match wins)."""
    ignored = False
    parts = path.split("/")
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw.removeprefix("!")
        regex = re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*", "[^/]*") \
            .replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, "/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            ignored = not negate
    return ignored


def test_the_build_context_keeps_secrets_and_databases_out() -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for secret in (".env", "deploy/.env", ".env.local", "codat-hooks.db", "codat-hooks.db-wal",
                   "data/x.db-shm", ".venv/bin/python", ".git/config", "tests/conftest.py"):
        assert _ignored(secret, patterns), secret
    for needed in ("pyproject.toml", "README.md", "deploy/requirements.lock",
                   "service/app.py", "schemas/state.py", "handlers/__init__.py",
                   "deploy/env.example"):
        assert not _ignored(needed, patterns), needed


# --- Kubernetes ---------------------------------------------------------------------------------

def test_no_pod_mounts_a_service_account_token() -> None:
    specs = list(_pod_specs())
    assert len(specs) >= 3
    for workload, spec in specs:
        assert spec.get("automountServiceAccountToken") is False, workload["metadata"]["name"]


def _selects(policy: dict[str, Any], labels: dict[str, str]) -> bool:
    wanted = policy["spec"]["podSelector"].get("matchLabels", {})
    return bool(wanted) and wanted.items() <= labels.items()


def test_every_pod_is_under_a_network_policy_for_both_directions() -> None:
    policies = [d for d in _k8s() if d["kind"] == "NetworkPolicy"]
    for workload, spec in _pod_specs():
        labels = workload["spec"]["template"]["metadata"]["labels"]
        mine = [p for p in policies if _selects(p, labels)]
        name = workload["metadata"]["name"]
        assert mine, f"{name}: no NetworkPolicy selects it"
        types = {t for p in mine for t in p["spec"]["policyTypes"]}
        assert types == {"Ingress", "Egress"}, name
        egress = [rule for p in mine for rule in p["spec"].get("egress", [])]
        assert all(rule.get("ports") for rule in egress), f"{name}: an allow-all egress rule"
        allowed_out = {port["port"] for rule in egress for port in rule["ports"]}
        assert allowed_out <= {53, 443, 5432}, (name, allowed_out)
        allowed_in = {port["port"] for p in mine for rule in p["spec"].get("ingress", [])
                      for port in rule.get("ports", [])}
        served = {port["containerPort"] for c in spec["containers"] for port in c.get("ports", [])}
        assert allowed_in == served, (name, allowed_in, served)


def test_the_manifests_parse() -> None:
    for path in (ROOT / "deploy" / "k8s").glob("*.yaml"):
        assert list(yaml.safe_load_all(path.read_text()))

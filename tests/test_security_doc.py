"""SECURITY.md stays true: the settings it names exist, every secret setting is covered, and the
routes it names are served."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import SecretStr
from starlette.routing import Route

from service.app import create_app
from service.settings import Settings
from tests.conftest import make_settings

DOC = (Path(__file__).resolve().parents[1] / "SECURITY.md").read_text()
SETTINGS = {name.upper() for name in Settings.model_fields}
SECRETS = {name.upper() for name, field in Settings.model_fields.items()
           if field.annotation is SecretStr} | {"DATABASE_URL"}


def _quoted() -> set[str]:
    return set(re.findall(r"`([^`]+)`", DOC))


def test_every_setting_named_exists() -> None:
    named = {q for q in _quoted() if re.fullmatch(r"[A-Z][A-Z0-9_]{3,}", q)}
    assert named, "SECURITY.md names no setting"
    assert named <= SETTINGS, f"not settings: {sorted(named - SETTINGS)}"


def test_every_secret_has_its_row() -> None:
    rows = {m for m in re.findall(r"^\| `([A-Z0-9_]+)`", DOC, re.MULTILINE)}
    assert rows >= SECRETS, f"secrets without a row: {sorted(SECRETS - rows)}"


def test_every_route_named_is_served(tmp_path: Path) -> None:
    app = create_app(make_settings(f"sqlite:///{tmp_path}/x.db"))
    served = {r.path for r in app.routes if isinstance(r, Route)}
    named = {q.split()[-1] for q in _quoted() if q.split()[-1].startswith("/")
             and not q.startswith("/v1/...")}
    assert named <= served, f"not routes: {sorted(named - served)}"

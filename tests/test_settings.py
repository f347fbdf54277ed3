"""load_settings: secrets, environment and .env, refusals that name the variable, no leaks.

The autouse fixture in conftest clears our variables and chdirs to tmp_path, so a ``.env``
written to tmp_path is the one load_settings reads.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import traceback
from pathlib import Path

import pytest

from service.app import create_app
from service.errors import ConfigError
from service.settings import load_settings, parse_webhook_secrets
from tests.factories import OTHER_SECRET, SECRET, SECRET_2

REPO = Path(__file__).resolve().parents[1]
VAR = "CODAT_WEBHOOK_SECRETS"
SECRET_3 = "whsec_" + base64.b64encode(b"yet-another-secret-for-tests-01").decode()


def _ids(*secrets: str) -> list[str]:
    return [parse_webhook_secrets(s)[0].id for s in secrets]


# --- secrets -----------------------------------------------------------------------------------

@pytest.mark.parametrize("raw", [
    f"{SECRET},{SECRET_2},{SECRET_3}",
    f"{SECRET}, {SECRET_2}, {SECRET_3}",
    f"{SECRET} {SECRET_2} {SECRET_3}",
    f"  {SECRET}\n{SECRET_2}\t{SECRET_3}  ",
    f",{SECRET} ,, {SECRET_2},\n {SECRET_3},",
])
def test_secrets_are_separated_by_commas_and_or_whitespace(raw: str) -> None:
    secrets = load_settings(codat_webhook_secrets=raw).webhook_secrets
    assert [s.value for s in secrets] == [SECRET, SECRET_2, SECRET_3]
    assert [s.id for s in secrets] == _ids(SECRET, SECRET_2, SECRET_3)


def test_one_secret_is_enough() -> None:
    assert [s.value for s in load_settings(codat_webhook_secrets=SECRET).webhook_secrets] == \
        [SECRET]


@pytest.mark.parametrize("raw", [None, "", "   ", "\n\t"])
def test_no_secret_is_fine_for_the_cli_but_not_for_the_receiver(
        raw: str | None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    if raw is not None:
        monkeypatch.setenv(VAR, raw)
    settings = load_settings(database_url=f"sqlite:///{tmp_path / 'x.db'}")  # the CLI's view
    with pytest.raises(ConfigError, match=VAR) as caught:
        _ = settings.webhook_secrets
    assert "required" in str(caught.value)
    with pytest.raises(ConfigError, match=VAR):
        create_app(settings)


def test_a_separators_only_value_counts_as_empty_for_the_cli(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(VAR, " , ,")
    settings = load_settings()
    with pytest.raises(ConfigError, match=VAR):
        _ = settings.webhook_secrets


MALFORMED = {
    "no prefix": ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "does not start with 'whsec_'"),
    "other prefix": ("whsek_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "does not start with 'whsec_'"),
    "bad base64": ("whsec_not*base64!chars", "not valid base64"),
    "impossible length": ("whsec_MfKQ9", "not valid base64"),
    "empty after prefix": ("whsec_", "empty after 'whsec_'"),
    "only padding": ("whsec_====", "empty after 'whsec_'"),
    "second one bad": (f"{SECRET}, whsec_oops!", "secret #2"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_secrets_are_refused_naming_the_variable(case: str) -> None:
    raw, message = MALFORMED[case]
    with pytest.raises(ConfigError) as caught:
        load_settings(codat_webhook_secrets=raw)
    text = str(caught.value)
    assert VAR in text and message in text
    for part in raw.replace(",", " ").split():
        if len(part) > len("whsec_"):
            assert part not in text
            assert part.removeprefix("whsec_") not in text


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_secrets_from_the_environment_are_refused(
        case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(VAR, MALFORMED[case][0])
    with pytest.raises(ConfigError, match=VAR):
        load_settings()


def test_parse_webhook_secrets_raises_value_error() -> None:
    with pytest.raises(ValueError, match="at least one"):
        parse_webhook_secrets(" ")
    with pytest.raises(ValueError, match="secret #1"):
        parse_webhook_secrets("nope")


# --- where values come from --------------------------------------------------------------------

def test_values_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(VAR, f"{SECRET} {SECRET_2}")
    monkeypatch.setenv("DATABASE_URL", "postgresql://app@db:5432/codat")
    monkeypatch.setenv("WEBHOOK_TOLERANCE_SECONDS", "120")
    monkeypatch.setenv("SERVICE_API_TOKENS", "t1, t2")
    settings = load_settings()
    assert [s.value for s in settings.webhook_secrets] == [SECRET, SECRET_2]
    assert settings.database_url == "postgresql://app@db:5432/codat"
    assert settings.webhook_tolerance_seconds == 120
    assert settings.api_tokens == {"t1", "t2"}


def test_values_come_from_a_dotenv_file_in_the_working_directory(tmp_path: Path) -> None:
    assert Path.cwd() == tmp_path
    (tmp_path / ".env").write_text(
        f"{VAR}={SECRET}\nDATABASE_URL=sqlite:///./from-dotenv.db\n"
        "WEBHOOK_TOLERANCE_SECONDS=42\nSERVICE_API_TOKENS=dotenv-token\n")
    settings = load_settings()
    assert [s.value for s in settings.webhook_secrets] == [SECRET]
    assert settings.database_url == "sqlite:///./from-dotenv.db"
    assert settings.webhook_tolerance_seconds == 42
    assert settings.api_tokens == {"dotenv-token"}


def test_the_environment_wins_over_the_dotenv_file(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text(f"{VAR}={SECRET}\nWEBHOOK_TOLERANCE_SECONDS=42\n")
    monkeypatch.setenv(VAR, SECRET_2)
    settings = load_settings()
    assert [s.value for s in settings.webhook_secrets] == [SECRET_2]
    assert settings.webhook_tolerance_seconds == 42


def test_a_bad_value_in_the_dotenv_file_is_refused_naming_it(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("WEBHOOK_TOLERANCE_SECONDS=900\n")
    with pytest.raises(ConfigError, match="WEBHOOK_TOLERANCE_SECONDS"):
        load_settings()


def test_without_environment_or_dotenv_the_defaults_apply() -> None:
    settings = load_settings()
    assert settings.database_url == "sqlite:///./codat-hooks.db"
    assert settings.webhook_tolerance_seconds == 300
    assert settings.api_tokens == frozenset()


def test_nothing_is_read_at_import(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("WEBHOOK_TOLERANCE_SECONDS=not-a-number\n")
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("CODAT_", "DATABASE_"))},
        "PYTHONPATH": str(REPO), VAR: "garbage", "DATABASE_URL": "mysql://u:p@h/db",
        "SERVICE_API_TOKENS": "", "PYTHONWARNINGS": "error"}
    script = (
        "import service.app, service.cli, service.settings\n"
        "try:\n"
        "    service.settings.load_settings()\n"
        "except service.errors.ConfigError as exc:\n"
        "    print('refused:', exc)\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=environment,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    # The same environment is refused once settings are actually read.
    assert result.stdout.startswith("refused:")
    for name in (VAR, "DATABASE_URL", "WEBHOOK_TOLERANCE_SECONDS"):
        assert name in result.stdout


# --- refusals that name the variable -------------------------------------------------------------

@pytest.mark.parametrize("value", ["0", "-1", "301", "3600", "abc", "1.5", ""])
def test_tolerance_outside_1_to_300_is_refused(value: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEBHOOK_TOLERANCE_SECONDS", value)
    with pytest.raises(ConfigError, match="WEBHOOK_TOLERANCE_SECONDS"):
        load_settings()


@pytest.mark.parametrize("value", [1, 300])
def test_tolerance_edges_are_accepted(value: int) -> None:
    assert load_settings(webhook_tolerance_seconds=value).webhook_tolerance_seconds == value


@pytest.mark.parametrize("url", ["mysql://app:pw@db/codat", "http://db/codat",
                                 "sqlite:memory", "db.sqlite3", "", "postgresqlx://db/x"])
def test_unknown_database_url_is_refused(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", url)
    with pytest.raises(ConfigError, match="DATABASE_URL") as caught:
        load_settings()
    if "pw" in url:
        assert "pw" not in str(caught.value)


@pytest.mark.parametrize("url", ["sqlite:///./x.db", "sqlite:////var/lib/x.db",
                                 "postgresql://app@db:5432/codat", "postgres://app@db/codat",
                                 "postgresql+asyncpg://app@db/codat"])
def test_known_database_urls_are_accepted(url: str) -> None:
    assert load_settings(database_url=url).database_url == url


def test_several_problems_are_all_named() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(codat_webhook_secrets="nope", webhook_tolerance_seconds=0,
                      database_url="mysql://x")
    for name in (VAR, "WEBHOOK_TOLERANCE_SECONDS", "DATABASE_URL"):
        assert name in str(caught.value)


# --- no secret leaks -----------------------------------------------------------------------------

def test_no_secret_appears_in_the_repr() -> None:
    settings = load_settings(codat_webhook_secrets=f"{SECRET}, {SECRET_2}",
                             service_api_tokens="api-token-123 api-token-456")
    text = repr(settings) + str(settings) + repr(settings.webhook_secrets)
    for secret in (SECRET, SECRET_2, "api-token-123", "api-token-456"):
        assert secret not in text
        assert secret.removeprefix("whsec_") not in text


def test_the_database_password_does_not_appear_in_the_repr() -> None:
    settings = load_settings(database_url="postgresql://app:hunter2-secret@db:5432/codat")
    assert "hunter2-secret" not in repr(settings)


def test_no_secret_appears_in_the_config_error_or_its_traceback() -> None:
    # Values go through variables: the traceback shows source lines, never argument values.
    bad = f"{SECRET}, {OTHER_SECRET.removeprefix('whsec_')}"
    token = "api-token-" + "789"
    with pytest.raises(ConfigError) as caught:
        load_settings(codat_webhook_secrets=bad, service_api_tokens=token,
                      webhook_tolerance_seconds=0)
    shown = "".join(traceback.format_exception(caught.value))
    for secret in (SECRET, OTHER_SECRET.removeprefix("whsec_"), token):
        assert secret not in shown
    assert VAR in shown and "secret #2" in shown

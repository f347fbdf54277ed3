"""Schema migrations (alembic), applied by ``codat-hooks db upgrade`` and checked by /readyz."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

from service.db import Tx, sql, sqlite_path
from service.private_files import make_private

_SCRIPTS = Path(__file__).parent / "migrations"
_CURRENT = sql("SELECT version_num FROM alembic_version")


def sqlalchemy_url(url: str) -> str:
    """DATABASE_URL as SQLAlchemy wants it: PostgreSQL through asyncpg."""
    if url.startswith("sqlite"):
        return url
    scheme, rest = url.split("://", 1)
    return "postgresql+asyncpg://" + rest if scheme in ("postgresql", "postgres") else url


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_SCRIPTS))
    config.set_main_option("sqlalchemy.url", sqlalchemy_url(url).replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Apply migrations up to ``revision`` (blocking; run it before the event loop starts)."""
    if url.startswith("sqlite"):
        make_private(sqlite_path(url))  # before SQLAlchemy creates it with the umask's mode
    command.upgrade(alembic_config(url), revision)


def head_revision() -> str | None:
    return ScriptDirectory(str(_SCRIPTS)).get_current_head()


async def current_revision(tx: Tx) -> str | None:
    """The revision the database is at (None before the first migration)."""
    try:
        value = await tx.fetchval(_CURRENT)
    except Exception:
        return None
    return None if value is None else str(value)

"""Files holding secrets or webhook bodies are 0600, whatever the umask: the SQLite database and
its -wal/-shm (set by the service), and the .env that deploy/scripts/serve writes."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.factories import at, connection_body, new_id, sign
from tests.processes import codat_hooks_command
from tests.wire import server

ROOT = Path(__file__).resolve().parents[1]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def loose_umask() -> object:
    old = os.umask(0o022)  # what most shells have: new files 0644
    yield old
    os.umask(old)


@pytest.mark.slow
def test_the_database_and_its_wal_and_shm_are_0600(tmp_path: Path, loose_umask: object) -> None:
    with server(tmp_path) as proc:
        body = connection_body("connection.created", company_id=new_id(),
                               connection_id=new_id(), status="PendingAuth", generated=at(0))
        response = httpx.post(f"{proc.url}/webhooks/codat", content=body, headers=sign(body))
        assert response.status_code == 200, response.text
        database = tmp_path / "hostile.db"
        files = [database, Path(f"{database}-wal"), Path(f"{database}-shm")]
        assert all(f.exists() for f in files)
        assert {f.name: oct(mode(f)) for f in files} == {f.name: "0o600" for f in files}


@pytest.mark.slow
def test_an_existing_readable_database_is_tightened(tmp_path: Path, sqlite_template: Path,
                                                     loose_umask: object) -> None:
    database = tmp_path / "hostile.db"
    shutil.copy(sqlite_template, database)
    database.chmod(0o644)
    Path(f"{database}-wal").write_bytes(b"")
    Path(f"{database}-wal").chmod(0o664)
    with server(tmp_path):
        assert mode(database) == 0o600
        assert mode(Path(f"{database}-wal")) == 0o600


def _script_tree(tmp_path: Path) -> Path:
    """deploy/scripts/serve in a tree of its own (it writes .env at its root): bootstrap does
    nothing (the venv is there), and .venv/bin is the real one."""
    scripts = tmp_path / "repo" / "deploy" / "scripts"
    scripts.mkdir(parents=True)
    shutil.copy(ROOT / "deploy" / "scripts" / "serve", scripts / "serve")
    (scripts / "bootstrap").write_text("#!/usr/bin/env bash\n")
    bin_dir = tmp_path / "repo" / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    real = Path(codat_hooks_command()[0]).parent
    for name in ("python", "codat-hooks"):
        (bin_dir / name).symlink_to(real / name)
    return tmp_path / "repo"


def _run_serve(repo: Path) -> subprocess.CompletedProcess[str]:
    # --port x: click refuses it once .env is written, so `serve` stops there.
    return subprocess.run(["bash", "-c", "umask 022; exec bash deploy/scripts/serve --port x"],
                          cwd=repo, capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})


def test_serve_writes_env_0600_and_tightens_an_old_one(tmp_path: Path) -> None:
    repo = _script_tree(tmp_path)
    done = _run_serve(repo)
    env = repo / ".env"
    assert env.exists(), done.stderr
    assert mode(env) == 0o600
    assert "CODAT_API_KEY=" in env.read_text()
    env.chmod(0o644)  # written by an older version of the script
    _run_serve(repo)
    assert mode(env) == 0o600

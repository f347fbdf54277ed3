"""Files that hold secrets or webhook bodies are readable by their owner only (0600).

The SQLite database keeps every raw delivery body, so it is created 0600 before SQLite first
opens it, and an existing one (with its ``-wal``, ``-shm`` and ``-journal`` files) is tightened
to 0600 on every start. SQLite creates the ``-wal`` and ``-shm`` files with the database file's
own permissions, so they follow.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from service.logs import get_logger

PRIVATE = 0o600
SQLITE_COMPANIONS = ("", "-wal", "-shm", "-journal")
log = get_logger("files")


def make_private(path: str | Path) -> None:
    """Create ``path`` 0600 if it does not exist; make it and its SQLite companions 0600."""
    database = Path(path)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(database, os.O_CREAT | os.O_EXCL | os.O_WRONLY, PRIVATE))
    for suffix in SQLITE_COMPANIONS:
        target = Path(f"{database}{suffix}")
        try:
            mode = stat.S_IMODE(target.stat().st_mode)
            if mode & 0o077:
                os.chmod(target, mode & ~0o077)
        except FileNotFoundError:
            continue
        except PermissionError:
            log.warning("cannot make a database file private (not its owner)",
                        extra={"fields": {"path": str(target), "mode": oct(mode)}})

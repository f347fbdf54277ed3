"""Debian packages a test needs (Chromium, Prometheus): installed with apt-get when missing and
possible (as root), else the test is skipped cleanly, saying why."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

_updated = False


def installed_or_skip(executable: Path, package: str) -> Path:
    """``executable``, after ``apt-get install -y package`` if it is missing; a skip otherwise."""
    global _updated
    if executable.exists():
        return executable
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.skip(f"{executable} is missing and cannot be installed here (needs root and "
                    f"apt-get to install Debian's {package})")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    commands = [] if _updated else [(["apt-get", "update"], 300)]
    commands.append((["apt-get", "install", "-y", package], 600))
    try:
        for command, timeout in commands:
            subprocess.run(command, check=True, capture_output=True, timeout=timeout, env=env)
            _updated = _updated or command[1] == "update"
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"{executable} is missing and apt-get could not install {package}: {exc}")
    if not executable.exists():
        pytest.skip(f"apt-get installed {package}, but not as {executable}")
    return executable

"""Real processes for the fault tests (no tests here): ``codat-hooks`` subprocesses and a private
PostgreSQL cluster, each started with its output in a log file and always stopped by the caller
(``finally``), by its own pid, never by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

from service.localserver import free_port

# Every variable the service reads: a subprocess gets only what the test gives it.
SERVICE_VARIABLES = (
    "CODAT_WEBHOOK_SECRETS", "DATABASE_URL", "SERVICE_API_TOKENS", "WEBHOOK_TOLERANCE_SECONDS",
    "WEBHOOK_MAX_BODY_BYTES", "SQLITE_SYNCHRONOUS", "SQLITE_BUSY_TIMEOUT_MS", "DB_POOL_SIZE",
    "DB_RETRY_AFTER_SECONDS", "LOG_LEVEL", "CODAT_API_KEY", "CODAT_BASE_URL",
    "CODAT_TIMEOUT_SECONDS", "BILL_PAY_MODE", "WORKER_ENABLED", "WORKER_POLL_SECONDS",
    "WORKER_STOP_GRACE_SECONDS", "OUTBOX_MAX_ATTEMPTS", "OUTBOX_LEASE_SECONDS",
    "OUTBOX_BACKOFF_BASE_SECONDS", "OUTBOX_BACKOFF_MAX_SECONDS", "SERVICE_READ_TOKENS",
    "SERVICE_BEHIND_TLS", "HTTP_HEAD_TIMEOUT_SECONDS", "HTTP_BODY_TIMEOUT_SECONDS",
    "HTTP_IDLE_TIMEOUT_SECONDS", "HTTP_MAX_CONNECTIONS", "DB_WRITE_PARTITIONS",
)


def codat_hooks_command() -> list[str]:
    script = Path(sys.executable).parent / "codat-hooks"
    return [str(script)] if script.exists() else [sys.executable, "-m", "service.cli"]


def service_env(**values: object) -> dict[str, str]:
    """The machine's environment without any service setting, plus ``values``."""
    env = {k: v for k, v in os.environ.items() if k not in SERVICE_VARIABLES}
    env["PYTHONUNBUFFERED"] = "1"
    env.update({k.upper(): str(v) for k, v in values.items()})
    return env


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class Proc:
    """One ``codat-hooks`` subprocess; its stdout and stderr go to ``log_path``."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]
    url: str | None = None
    closed: bool = field(default=False)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL, then reap (idempotent)."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(timeout=10)
        self._close()

    def terminate(self, timeout: float = 10.0) -> int:
        """SIGTERM; SIGKILL if still running after ``timeout``; the exit code."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        code = self.popen.wait(timeout=10)
        self._close()
        return code

    def _close(self) -> None:
        if not self.closed:
            self.closed = True
            self.log_file.close()

    def tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)


def _limit_files(count: int) -> Callable[[], None]:
    def apply() -> None:  # in the child, before exec
        resource.setrlimit(resource.RLIMIT_NOFILE, (count, count))
    return apply


def spawn(name: str, args: list[str], *, env: dict[str, str], cwd: Path, log_dir: Path,
          fd_limit: int | None = None) -> Proc:
    """``codat-hooks ARGS``; ``fd_limit`` sets its RLIMIT_NOFILE (soft and hard)."""
    log_path = log_dir / f"{name}.log"
    log_file = log_path.open("ab")
    try:
        popen = subprocess.Popen([*codat_hooks_command(), *args], env=env, cwd=cwd,
                                 stdin=subprocess.DEVNULL, stdout=log_file,
                                 stderr=subprocess.STDOUT,
                                 preexec_fn=_limit_files(fd_limit) if fd_limit else None)
    except BaseException:
        log_file.close()
        raise
    return Proc(name, popen, log_path, log_file)


async def wait_ready(proc: Proc, url: str, *, timeout: float = 30.0,
                     path: str = "/healthz") -> None:
    """Poll ``url + path`` until it answers 200; fail early if the process died."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=1.0, trust_env=False) as client:
        while True:
            if not proc.alive():
                raise AssertionError(f"{proc.name} exited with {proc.popen.returncode}:\n"
                                     f"{proc.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url + path)).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise AssertionError(f"{proc.name} not ready within {timeout}s:\n{proc.tail()}")
            await asyncio.sleep(0.05)


async def start_receiver(name: str, *, env: dict[str, str], cwd: Path, log_dir: Path,
                         migrate: bool | None = None, timeout: float = 30.0,
                         fd_limit: int | None = None) -> Proc:
    """``codat-hooks serve`` on a free loopback port, answering /healthz."""
    port = free_port()
    args = ["serve", "--host", "127.0.0.1", "--port", str(port)]
    if migrate is not None:
        args.append("--migrate" if migrate else "--no-migrate")
    proc = spawn(name, args, env=env, cwd=cwd, log_dir=log_dir, fd_limit=fd_limit)
    proc.url = f"http://127.0.0.1:{port}"
    try:
        await wait_ready(proc, proc.url, timeout=timeout)
    except BaseException:
        proc.kill()
        raise
    return proc


def start_worker(name: str, *, env: dict[str, str], cwd: Path, log_dir: Path) -> Proc:
    """``codat-hooks worker --id NAME`` (no status port)."""
    return spawn(name, ["worker", "--id", name], env=env, cwd=cwd, log_dir=log_dir)


def memory_kib(pid: int) -> tuple[int, int]:
    """(resident now, peak resident) of a process, in KiB, from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        fields[name] = value.split()[0] if value.split() else "0"
    return int(fields["VmRSS"]), int(fields["VmHWM"])


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def run_cli(args: list[str], *, env: dict[str, str], cwd: Path,
            timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*codat_hooks_command(), *args], env=env, cwd=cwd,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout, check=False)


# --- a private PostgreSQL cluster ----------------------------------------------------------------

class ClusterUnavailable(Exception):
    """No PostgreSQL server binaries, or they cannot be run here (the text says why)."""


def _pg_bin(name: str) -> str | None:
    for directory in ("/usr/lib/postgresql/15/bin", "/usr/local/bin"):
        candidate = Path(directory) / name
        if candidate.exists():
            return str(candidate)
    return shutil.which(name)


@dataclass
class PrivateCluster:
    """A throw-away PostgreSQL cluster on a free loopback port, run as the ``postgres`` OS user
    when this process is root (PostgreSQL refuses to run as root)."""

    base: Path
    port: int
    pg_ctl: str
    run_as: list[str]

    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def log(self) -> Path:
        return self.base / "server.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _ctl(self, *args: str, timeout: float = 60.0) -> None:
        out = self.base / "pg_ctl.out"
        with out.open("ab") as sink:
            done = subprocess.run([*self.run_as, self.pg_ctl, "-D", str(self.data), *args],
                                  stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
                                  timeout=timeout, check=False)
        if done.returncode != 0:
            raise ClusterUnavailable(f"pg_ctl {' '.join(args)} exited {done.returncode}:\n"
                                     f"{log_tail(out)}\n{log_tail(self.log)}")

    def start(self) -> None:
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 "
                   f"-c unix_socket_directories={self.base} -c fsync=off "
                   f"-c full_page_writes=off -c max_connections=60")
        self._ctl("-l", str(self.log), "-o", options, "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._ctl("-m", mode, "-w", "-t", "60", "stop")

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def destroy(self) -> None:
        """Stop the server (immediately, by its own pid if pg_ctl cannot) and delete the dir."""
        pid = self.postmaster_pid()
        try:
            self.stop("immediate")
        except (ClusterUnavailable, subprocess.TimeoutExpired, OSError):
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.base, ignore_errors=True)


@contextlib.contextmanager
def private_cluster() -> Iterator[PrivateCluster]:
    """initdb + start on a free port; stopped and deleted when the block ends.

    Raises :class:`ClusterUnavailable` (callers skip) without the binaries, or when they
    cannot run (not root and not allowed to, no ``postgres`` OS user, ...)."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        raise ClusterUnavailable("no initdb/pg_ctl (PostgreSQL server binaries) on this machine")
    run_as: list[str] = []
    owner: tuple[int, int] | None = None
    if os.geteuid() == 0:
        runuser = shutil.which("runuser")
        if runuser is None:
            raise ClusterUnavailable("root, and no runuser to run PostgreSQL as another user")
        try:
            import pwd
            entry = pwd.getpwnam("postgres")
        except KeyError:
            raise ClusterUnavailable("root, and no 'postgres' OS user to run PostgreSQL as") \
                from None
        run_as = [runuser, "-u", "postgres", "--"]
        owner = (entry.pw_uid, entry.pw_gid)
    base = Path(tempfile.mkdtemp(prefix="codat-faults-pg-"))
    cluster = PrivateCluster(base, free_port(), pg_ctl, run_as)
    try:
        if owner is not None:
            os.chown(base, *owner)
        with (base / "initdb.out").open("ab") as sink:
            done = subprocess.run(
                [*run_as, initdb, "-D", str(cluster.data), "-U", "postgres", "--auth=trust",
                 "-N", "-E", "UTF8", "--locale=C"],
                stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT, timeout=120,
                check=False)
        if done.returncode != 0:
            raise ClusterUnavailable(f"initdb exited {done.returncode}:\n"
                                     f"{log_tail(base / 'initdb.out')}")
        cluster.start()
    except BaseException:
        cluster.destroy()
        raise
    try:
        yield cluster
    finally:
        cluster.destroy()

"""Ingest benchmark: codat-hooks against a bare baseline, on SQLite and on PostgreSQL.

    .venv/bin/python deploy/bench/bench.py [--db sqlite|postgres|both] [--runs 3]
        [--duration 10] [--connections 8] [--deliveries N] [--large]

For each database and each target (``baseline``: deploy/bench/baseline.py, the bare way;
``codat-hooks``: the service as shipped), every run on a FRESH database:

1. signs the planned deliveries with svix's own signer at a fresh timestamp and writes them
   as raw HTTP requests for wrk (Codat-shaped connection.created -> connected -> disconnected
   events of thousands of companies, about 5% redelivered: same message id, same body);
2. starts the server pinned to CPU 0 (``taskset -c 0``), ``codat-hooks serve`` after
   ``codat-hooks db upgrade``, or the baseline under uvicorn; waits until it answers; sends a
   short warm-up of other deliveries;
3. drives it with wrk pinned to CPU 1 (``wrk -t2 -c8 -d{duration}s --latency``,
   deploy/bench/deliveries.lua: each wrk thread sends its own slice, each request once);
4. measures the server's CPU time (utime+stime of the process and any children, from
   /proc/PID/stat) and peak RSS (VmHWM), and on PostgreSQL the CPU time of the database's
   backends too (not pinned: they run wherever the kernel puts them);
5. checks the database: the deliveries stored are exactly those acknowledged as stored
   (give or take requests still in flight when wrk stopped, which are counted), none unsent.

Then prints, per database, the medians over the runs and the throughput ratio
codat-hooks/baseline. ``--large`` also measures codat-hooks on a database pre-loaded with
1,000,000 deliveries and 100,000 connections (``--large-deliveries``, ``--large-connections``):
ingest, and the query API's ``GET /v1/connections/{id}`` and
``GET /v1/connections?status=Linked&limit=100``, beside the same on the empty database.

Exit status: 0 when every run was clean; 1 when a run had non-2xx answers, socket errors, ran out
of deliveries or failed its database check (all still reported); 2 when the benchmark itself
could not run. Servers are stopped, ``bench_*`` databases it created dropped and temporary files
removed on every exit.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import http.client
import importlib.metadata
import json
import math
import os
import platform
import random
import secrets
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(HERE), str(ROOT)]

import asyncpg  # noqa: E402
import workload  # noqa: E402

from service.settings import Settings  # noqa: E402

BIN = Path(sys.executable).parent
CODAT_HOOKS = BIN / "codat-hooks"
WRK_THREADS = 2
CLK_TCK = os.sysconf("SC_CLK_TCK")
TARGETS = ("baseline", "codat-hooks")
# codat-hooks as users run it (`serve`'s defaults: the embedded worker, a log line per delivery
# at INFO), with Codat unreachable or with the sandbox answering for every company of the storm.
# codat-hooks-scaled (PostgreSQL only): two receivers sharing the port (`serve --reuse-port`,
# their workers off) and one `codat-hooks worker`, all on the server's CPU, Codat answered by
# the sandbox: scaling out as the README describes, on the baseline's CPU budget.
WORKER_VARIANTS = ("codat-hooks-defaults", "codat-hooks-sandbox", "codat-hooks-scaled")
SANDBOX_VARIANTS = ("codat-hooks-sandbox", "codat-hooks-scaled")
VARIANTS = ("baseline", "codat-hooks", *WORKER_VARIANTS, "codat-hooks-stock")
DRAIN_LIMIT_S = 600
LIST_PATH = "/v1/connections?status=Linked&limit=100"


class BenchError(Exception):
    """The benchmark could not go on (a server did not start, a tool failed, ...)."""


class TimeLimit(BaseException):
    """The whole benchmark took longer than its bound."""


def log(message: str) -> None:
    print(message, flush=True)


# --- processes and /proc ----------------------------------------------------------------------

def _stat_fields(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2:].split()  # fields from the 3rd (state) on


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                if int(_stat_fields(int(entry.name))[1]) == pid:
                    found.append(int(entry.name))
    return found


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        todo.extend(_children(current))
    return pids


def cpu_seconds(pid: int) -> float:
    """utime+stime of the process, of its live descendants, and of its waited-for children."""
    total = 0
    for p in _tree(pid):
        with contextlib.suppress(OSError):
            f = _stat_fields(p)
            total += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
    return total / CLK_TCK


def peak_rss_mb(pid: int) -> float:
    """VmHWM (peak resident set) of the process and its live descendants, in MiB."""
    total = 0
    for p in _tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
    return total / 1024


def pids_cpu(pids: Iterable[int]) -> dict[int, float]:
    result = {}
    for p in pids:
        with contextlib.suppress(OSError):
            f = _stat_fields(p)
            result[p] = (int(f[11]) + int(f[12])) / CLK_TCK
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --- PostgreSQL -------------------------------------------------------------------------------

def pg_url(base: str, database: str) -> str:
    return urlsplit(base)._replace(path="/" + database).geturl()


def pg(url: str, work: Callable[[asyncpg.Connection], Any]) -> Any:
    """Run ``await work(conn)`` on a fresh connection to ``url``."""
    async def run() -> Any:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            return await work(conn)
        finally:
            await conn.close()
    return asyncio.run(run())


def pg_fetch(url: str, query: str, *args: Any) -> list[Any]:
    rows: list[Any] = pg(url, lambda c: c.fetch(query, *args))
    return rows


# --- the benchmark ----------------------------------------------------------------------------

@dataclass
class Result:
    """One measured run of one target."""

    db: str
    variant: str  # one of VARIANTS, or codat-hooks-large
    run: int
    wrk: dict[str, Any]
    cpu_s: float
    backend_cpu_s: float | None
    rss_mb: float
    sanity: str
    problems: list[str] = field(default_factory=list)
    queries: dict[str, dict[str, Any]] = field(default_factory=dict)
    # With a worker: the follow-up jobs when the storm ended, and how they drained after it.
    backlog: dict[str, int] = field(default_factory=dict)
    drain_s: float | None = None  # from the end of the storm until no job was pending
    drain_cpu_s: float = 0.0  # the server's CPU in that time (its worker's, nearly all)

    @property
    def seconds(self) -> float:
        return float(self.wrk["duration_us"]) / 1e6

    @property
    def rate(self) -> float:
        return float(self.wrk["ok"]) / self.seconds

    def latency_ms(self, which: str) -> float:
        return float(self.wrk["latency_us"][which]) / 1000

    @property
    def cpu_us(self) -> float:
        return self.cpu_s * 1e6 / max(1, self.wrk["ok"])

    @property
    def total_cpu_us(self) -> float:
        """CPU per delivery with the follow-up work it caused, drained after the storm."""
        return (self.cpu_s + self.drain_cpu_s) * 1e6 / max(1, self.wrk["ok"])

    @property
    def backend_cpu_us(self) -> float | None:
        if self.backend_cpu_s is None:
            return None
        return self.backend_cpu_s * 1e6 / max(1, self.wrk["ok"])


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
        self.token = secrets.token_urlsafe(24)
        self.codat_key = secrets.token_urlsafe(24)
        self.tmp = Path(tempfile.mkdtemp(prefix="codat-hooks-bench-", dir=args.workdir))
        self.tag = f"bench_{os.getpid()}"
        self.servers: list[subprocess.Popen[bytes]] = []
        self.databases: list[str] = []
        self.results: list[Result] = []
        self.problems: list[str] = []
        self.templates: dict[str, str] = {}
        self.settings_names = {name.upper() for name in Settings.model_fields}

    # --- set-up -------------------------------------------------------------------------------

    def prepare(self) -> None:
        a = self.args
        ids = workload.MessageIds(random.Random(a.seed))
        templates = workload.Templates.load()
        self.warmup = workload.build_stream(a.warmup, seed=a.seed + 1, ids=ids,
                                            templates=templates, redelivery_rate=0.0,
                                            window=50)
        started = time.monotonic()
        self.stream = workload.build_stream(a.deliveries, seed=a.seed, ids=ids,
                                            templates=templates)
        self.built_in = time.monotonic() - started
        self.first_id = min(d.message_id for d in
                            [*self.warmup.deliveries, *self.stream.deliveries])
        self.warm_ids = {d.message_id for d in self.warmup.deliveries}

    def facts(self) -> None:
        a = self.args
        cpu_model = "unknown"
        with contextlib.suppress(OSError):
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
        nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
        wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
        wrk_version_text = (wrk_version.stdout or wrk_version.stderr).split("Copyright")[0]
        versions = []
        for name in ("uvicorn", "starlette", "uvloop", "httptools", "svix", "asyncpg",
                     "orjson"):
            with contextlib.suppress(Exception):
                versions.append(f"{name} {importlib.metadata.version(name)}")
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True).stdout.strip() or "unknown"
        dirty = subprocess.run(["git", "--no-optional-locks", "-C", str(ROOT), "status",
                                "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        fs = subprocess.run(["findmnt", "-n", "-o", "FSTYPE,SOURCE", "-T", str(self.tmp)],
                            capture_output=True, text=True).stdout.split()
        fs = " on ".join(fs) or "unknown"
        s = self.stream
        log("=" * 100)
        log("codat-hooks ingest benchmark")
        log("=" * 100)
        log(f"machine     nproc {nproc}; CPU {cpu_model}; {platform.system()} "
            f"{platform.release()}; load average at start {os.getloadavg()[0]:.2f} "
            f"{os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
        log(f"python      {platform.python_version()} ({sys.executable}); "
            + ", ".join(versions))
        log(f"sqlite      {sqlite3.sqlite_version} (the library both servers use); database "
            f"files under {self.tmp} ({fs})")
        if "postgres" in self.dbs:
            log(f"postgresql  {self.pg_facts['server_version']} at "
                f"{urlsplit(a.pg_url).hostname}:{urlsplit(a.pg_url).port or 5432}, used as "
                "configured by its server")
        log(f"codat-hooks commit {commit}" + (" + uncommitted changes in the work tree"
                                              if dirty else ""))
        log(f"wrk         {wrk_version_text.strip()}: taskset -c {a.client_cpu} wrk -t"
            f"{WRK_THREADS} -c{a.connections} -d{a.duration}s --latency --timeout 15s")
        log(f"servers     pinned with taskset -c {a.server_cpu}, one process each (uvicorn, "
            "httptools, uvloop); PostgreSQL's own processes are not pinned")
        log("")
        log("durability measured (the same for both targets):")
        log(f"  SQLite      journal_mode=WAL, synchronous={a.sqlite_synchronous} "
            f"(SQLITE_SYNCHRONOUS={a.sqlite_synchronous}"
            + (": the WAL is fsynced at every commit)" if a.sqlite_synchronous == "FULL"
               else ": no fsync at commit, a power loss can lose the last commits)"))
        log("              codat-hooks: one writer thread, group commit (several deliveries "
            "per commit, each answered after its own commit)")
        log("              baseline:    one commit per request, in the handler")
        if "postgres" in self.dbs:
            f = self.pg_facts
            log(f"  PostgreSQL  synchronous_commit={f['synchronous_commit']}, fsync={f['fsync']}, "
                f"wal_sync_method={f['wal_sync_method']}, full_page_writes="
                f"{f['full_page_writes']}, shared_buffers={f['shared_buffers']}; "
                "pool of 8 connections (DB_POOL_SIZE=8) for both; the baseline commits each "
                "delivery alone, codat-hooks commits concurrent ones together (group commit)")
        log("settings    codat-hooks: WORKER_ENABLED=false LOG_LEVEL=WARNING DB_POOL_SIZE=8 "
            f"SQLITE_SYNCHRONOUS={a.sqlite_synchronous} CODAT_API_KEY=(unused) "
            "CODAT_WEBHOOK_SECRETS=(a fresh whsec_ secret) SERVICE_API_TOKENS=(a fresh token)"
            + "".join(f" {item}" for item in a.set))
        log(f"deliveries  {len(s.order)} per run planned ({len(s.deliveries)} distinct, "
            f"{s.redeliveries} redeliveries = {100 * s.redeliveries / len(s.order):.1f}%), "
            f"{s.companies} companies, {s.connections} connections; "
            + ", ".join(f"{k} {v}" for k, v in s.by_type.items()))
        log("            bodies: Codat's published connection.* examples (sourceType "
            "Accounting, integrationKey qhyg/gbol), svix-signed at a fresh timestamp before "
            f"each run; a warm-up of {len(self.warmup.deliveries)} other deliveries precedes "
            "each measurement")
        if a.large:
            log(f"large       codat-hooks also measured on a database pre-loaded with "
                f"{a.large_deliveries:,} deliveries and {a.large_connections:,} connections")
        log(f"runs        {a.runs} per target and database, {a.duration} s each; figures are "
            "medians over the runs (each column on its own)")
        log("")

    def check_tools(self) -> None:
        a = self.args
        for tool in ("wrk", "taskset", "findmnt", "nproc"):
            if shutil.which(tool) is None:
                raise BenchError(f"{tool} is not installed")
        if not CODAT_HOOKS.exists():
            raise BenchError(f"{CODAT_HOOKS} not found: run with the project's "
                             ".venv/bin/python")
        allowed = os.sched_getaffinity(0)
        for cpu in (a.server_cpu, a.client_cpu):
            if cpu not in allowed:
                raise BenchError(f"CPU {cpu} is not available here (CPUs: {sorted(allowed)}); "
                                 "see --server-cpu/--client-cpu")
        if a.server_cpu == a.client_cpu:
            log("warning: server and wrk share a CPU; figures are not comparable with the "
                "two-CPU layout")
        self.pg_facts: dict[str, str] = {}
        if "postgres" in self.dbs:
            host = urlsplit(a.pg_url).hostname
            if host not in ("127.0.0.1", "localhost"):
                raise BenchError("--pg-url must point at 127.0.0.1")
            try:
                rows = pg_fetch(a.pg_url, "SELECT name, setting, unit FROM pg_settings WHERE "
                                "name = ANY($1::text[])",
                                ["server_version", "synchronous_commit", "fsync",
                                 "wal_sync_method", "full_page_writes", "shared_buffers"])
            except Exception as exc:
                raise BenchError(f"PostgreSQL at {a.pg_url} is not reachable: {exc}") from exc
            for row in rows:
                value = row["setting"]
                if row["name"] == "shared_buffers" and row["unit"] == "8kB":
                    value = f"{int(value) * 8 // 1024}MB"
                self.pg_facts[row["name"]] = value

    # --- databases ----------------------------------------------------------------------------

    def server_env(self, database_url: str, codat_url: str | None = None) -> dict[str, str]:
        """The server's environment: with ``codat_url``, `serve`'s defaults (its worker on,
        logs at INFO) calling that Codat; without, the worker off and logs at WARNING."""
        env = {k: v for k, v in os.environ.items() if k.upper() not in self.settings_names}
        env.update({
            "CODAT_WEBHOOK_SECRETS": self.secret, "DATABASE_URL": database_url,
            "CODAT_API_KEY": self.codat_key, "WORKER_ENABLED": "false",
            "SERVICE_API_TOKENS": self.token, "LOG_LEVEL": "WARNING",
            "SQLITE_SYNCHRONOUS": self.args.sqlite_synchronous, "DB_POOL_SIZE": "8",
        })
        if codat_url is not None:
            env.update({"WORKER_ENABLED": "true", "LOG_LEVEL": "INFO",
                        "CODAT_BASE_URL": codat_url})
        env.update(dict(item.split("=", 1) for item in self.args.set))
        return env

    def create_pg(self, name: str, template: str | None = None) -> str:
        self.databases.append(name)
        clause = f" TEMPLATE {template} STRATEGY FILE_COPY" if template else ""
        pg(self.args.pg_url, lambda c: c.execute(f"CREATE DATABASE {name}{clause}"))
        return pg_url(self.args.pg_url, name)

    def drop_pg(self, name: str) -> None:
        pg(self.args.pg_url,
           lambda c: c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        if name in self.databases:
            self.databases.remove(name)

    def migrate(self, database_url: str, workdir: Path) -> None:
        done = subprocess.run([str(CODAT_HOOKS), "db", "upgrade"], cwd=workdir,
                              env=self.server_env(database_url), capture_output=True,
                              text=True, timeout=300)
        if done.returncode != 0:
            raise BenchError(f"codat-hooks db upgrade failed:\n{done.stdout}{done.stderr}")

    def build_large(self, db: str) -> None:
        """A migrated database holding the large data set, cloned for each large run."""
        a = self.args
        rows = workload.LargeRows(a.large_deliveries, a.large_connections, self.secret,
                                  seed=a.seed + 2)
        workdir = self.tmp / f"{db}-large-template"
        workdir.mkdir()
        started = time.monotonic()
        log(f"[{db}] pre-loading a large database: {a.large_deliveries:,} deliveries, "
            f"{a.large_connections:,} connections (with their companies and one history row "
            "each) ...")
        if db == "sqlite":
            path = workdir / "large.db"
            self.migrate(f"sqlite:///{path}", workdir)
            conn = sqlite3.connect(path, isolation_level=None)
            conn.execute("PRAGMA journal_mode=OFF")
            conn.execute("PRAGMA synchronous=OFF")
            conn.execute("PRAGMA cache_size=-1048576")
            fmt = "%Y-%m-%d %H:%M:%S.%f"  # how codat-hooks stores datetimes in SQLite

            def lite(value: Any) -> Any:
                return value.strftime(fmt) if isinstance(value, datetime) else value

            pending = 0
            conn.execute("BEGIN")
            for table, chunk in rows.build():
                columns = workload.COLUMNS[table]
                statement = (f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
                             f"({', '.join('?' * len(columns))})")
                conn.executemany(statement, [tuple(lite(v) for v in r) for r in chunk])
                pending += len(chunk)
                if pending >= 200_000:  # big transactions
                    conn.execute("COMMIT")
                    conn.execute("BEGIN")
                    pending = 0
            conn.execute("COMMIT")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.close()
            self.templates[db] = str(path)
            size = path.stat().st_size
        else:
            name = f"{self.tag}_large_tpl"
            url = self.create_pg(name)
            self.migrate(url, workdir)

            async def load(conn: asyncpg.Connection) -> int:
                for table, chunk in rows.build():
                    await conn.copy_records_to_table(table, records=chunk,
                                                     columns=list(workload.COLUMNS[table]))
                for table in workload.COLUMNS:
                    await conn.execute(f"VACUUM ANALYZE {table}")
                size: int = await conn.fetchval("SELECT pg_database_size(current_database())")
                return size

            size = pg(url, load)
            self.templates[db] = name
        log(f"[{db}] pre-loaded in {time.monotonic() - started:.0f} s: "
            f"{size / 2**20:,.0f} MiB; connections by status: "
            + ", ".join(f"{k} {v:,}" for k, v in sorted(rows.by_status.items()))
            + f"; {rows.companies:,} companies"
            + ("; VACUUM ANALYZE done (as autovacuum would have)" if db == "postgres" else ""))

    # --- servers ------------------------------------------------------------------------------

    def start(self, target: str, database_url: str, port: int, workdir: Path,
              codat_url: str | None = None, *, name: str | None = None,
              extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start ``target`` on the server's CPU and wait until it answers; ``target``
        ``worker`` is `codat-hooks worker` with its status port on ``port``, and
        ``receiver`` is `serve --reuse-port`."""
        a = self.args
        if target == "baseline":
            command = [sys.executable, str(HERE / "baseline.py"), "--port", str(port)]
        elif target == "codat-hooks-stock":
            command = [sys.executable, str(HERE / "stock_server.py"), "--port", str(port)]
        elif target == "worker":
            command = [str(CODAT_HOOKS), "worker", "--host", "127.0.0.1", "--port", str(port)]
        else:
            command = [str(CODAT_HOOKS), "serve", "--host", "127.0.0.1", "--port", str(port)]
            if target == "receiver":
                command.append("--reuse-port")
        name = name or target
        env = {**self.server_env(database_url, codat_url), **(extra_env or {})}
        logfile = (workdir / f"{name}.log").open("wb")
        server = subprocess.Popen(["taskset", "-c", str(a.server_cpu), *command], cwd=workdir,
                                  env=env, stdout=logfile, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        logfile.close()
        self.servers.append(server)
        target = name
        path = {"baseline": "/webhooks/codat", "worker": "/healthz"}.get(target, "/readyz")
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise BenchError(f"{target} exited with {server.returncode} while starting:\n"
                                 + tail(workdir / f"{target}.log"))
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                c.request("GET", path)
                status = c.getresponse().status
                c.close()
                if target == "baseline" or status == 200:  # the baseline: any answer (405)
                    return server
            except OSError:
                pass
            time.sleep(0.1)
        raise BenchError(f"{target} did not answer within 90 s:\n"
                         + tail(workdir / f"{target}.log"))

    def start_sandbox(self, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
        """The sandbox Codat (on the client's CPU), holding every company and connection of
        the warm-up and the storm, so that follow-up jobs succeed as they would in
        production."""
        port = free_port()
        command = [str(CODAT_HOOKS), "sandbox", "--host", "127.0.0.1", "--port", str(port),
                   "--webhook-url", "", "--api-key", self.codat_key, "--secret", self.secret]
        logfile = (workdir / "sandbox.log").open("wb")
        env = {k: v for k, v in os.environ.items() if k.upper() not in self.settings_names}
        sandbox = subprocess.Popen(["taskset", "-c", str(self.args.client_cpu), *command],
                                   cwd=workdir, env=env, stdout=logfile,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        logfile.close()
        self.servers.append(sandbox)
        body = json.dumps(workload.codat_import([self.warmup, self.stream])).encode()
        deadline = time.monotonic() + 60
        while True:
            if sandbox.poll() is not None:
                raise BenchError("the sandbox exited while starting:\n"
                                 + tail(workdir / "sandbox.log"))
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                c.request("POST", "/_sandbox/companies", body=body,
                          headers={"Content-Type": "application/json"})
                answer = c.getresponse()
                text = answer.read()
                c.close()
                if answer.status != 201:
                    raise BenchError(f"the sandbox refused the import: {text[:300]!r}")
                return sandbox, f"http://127.0.0.1:{port}"
            except OSError:
                if time.monotonic() > deadline:
                    raise BenchError("the sandbox did not answer within 60 s:\n"
                                     + tail(workdir / "sandbox.log")) from None
                time.sleep(0.1)

    def jobs(self, database_url: str) -> dict[str, int]:
        """The outbox's jobs by status."""
        query = "SELECT status, count(*) FROM outbox GROUP BY status"
        if database_url.startswith("sqlite"):
            conn = sqlite3.connect(database_url.split(":///", 1)[1], timeout=30)
            try:
                return dict(conn.execute(query).fetchall())
            finally:
                conn.close()
        return {r[0]: r[1] for r in pg_fetch(database_url, query)}

    def drain(self, outcome: Result, database_url: str, pids: list[int]) -> None:
        """After the storm: how long until no follow-up job is pending, and at what CPU."""
        started, cpu_before = time.monotonic(), sum(cpu_seconds(p) for p in pids)
        while time.monotonic() - started < DRAIN_LIMIT_S:
            counts = self.jobs(database_url)
            if not counts.get("pending") and not counts.get("running"):
                outcome.drain_s = time.monotonic() - started
                break
            time.sleep(0.25)
        else:
            outcome.problems.append(f"follow-up jobs still pending {DRAIN_LIMIT_S} s after "
                                    f"the storm: {self.jobs(database_url)}")
        outcome.drain_cpu_s = sum(cpu_seconds(p) for p in pids) - cpu_before
        outcome.backlog["after drain: dead"] = self.jobs(database_url).get("dead", 0)

    def stop(self, server: subprocess.Popen[bytes]) -> None:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=10)
        if server in self.servers:
            self.servers.remove(server)

    def warm_up(self, port: int, timestamp: int) -> None:
        signed = workload.signatures(self.warmup.deliveries, self.secret, timestamp)
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            for delivery, signature in zip(self.warmup.deliveries, signed, strict=True):
                c.request("POST", "/webhooks/codat", body=delivery.body, headers={
                    "Content-Type": "application/json", "User-Agent": workload.USER_AGENT,
                    "webhook-id": delivery.message_id, "webhook-timestamp": str(timestamp),
                    "webhook-signature": signature})
                answer = c.getresponse()
                text = answer.read()
                if not 200 <= answer.status < 300:
                    raise BenchError(f"warm-up delivery answered {answer.status}: "
                                     f"{text[:300]!r}")
        finally:
            c.close()

    def wait_idle(self, pid: int) -> None:
        """Until the server has used (almost) no CPU for 0.3 s: in-flight work is done."""
        deadline = time.monotonic() + 15
        before = cpu_seconds(pid)
        while time.monotonic() < deadline:
            time.sleep(0.3)
            now = cpu_seconds(pid)
            if now - before <= 0.011:
                return
            before = now
        log("  note: the server was still busy 15 s after wrk stopped")

    def wrk(self, url: str, script: str, script_args: list[str], workdir: Path,
            name: str) -> dict[str, Any]:
        a = self.args
        command = ["taskset", "-c", str(a.client_cpu), "wrk", f"-t{WRK_THREADS}",
                   f"-c{a.connections}", f"-d{a.duration}s", "--latency", "--timeout", "15s",
                   "-s", str(HERE / script), url, "--", *script_args]
        done = subprocess.run(command, capture_output=True, text=True,
                              timeout=a.duration + 180)
        (workdir / f"wrk-{name}.txt").write_text(done.stdout + done.stderr)
        lines = [x for x in done.stdout.splitlines() if x.startswith("BENCH_RESULT ")]
        if done.returncode != 0 or not lines:
            raise BenchError(f"wrk failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        result: dict[str, Any] = json.loads(lines[-1].removeprefix("BENCH_RESULT "))
        return result

    # --- one measured run ---------------------------------------------------------------------

    def measure(self, db: str, variant: str, run: int) -> Result:
        a = self.args
        target = variant if variant in ("baseline", "codat-hooks-stock") else "codat-hooks"
        with_worker = variant in WORKER_VARIANTS
        scaled = variant == "codat-hooks-scaled"
        large = variant == "codat-hooks-large"
        queries = a.large and target == "codat-hooks"
        workdir = self.tmp / f"{db}-{variant}-{run}"
        workdir.mkdir()
        pg_name = None
        if db == "sqlite":
            path = workdir / "bench.db"
            if large:
                shutil.copyfile(self.templates[db], path)
            database_url = f"sqlite:///{path}"
        else:
            pg_name = f"{self.tag}_{variant.replace('-', '_')}_{run}"
            database_url = self.create_pg(pg_name, self.templates[db] if large else None)
        server = sandbox = None
        servers: list[subprocess.Popen[bytes]] = []
        try:
            if target != "baseline":
                self.migrate(database_url, workdir)
            codat_url = None
            if variant in SANDBOX_VARIANTS:
                sandbox, codat_url = self.start_sandbox(workdir)
            elif with_worker:  # a port nothing listens on: every Codat call is refused
                codat_url = f"http://127.0.0.1:{free_port()}"
            port = free_port()
            if scaled:
                off = {"WORKER_ENABLED": "false"}
                servers = [self.start("receiver", database_url, port, workdir, codat_url,
                                      name=f"receiver-{n}", extra_env=off) for n in (1, 2)]
                servers.append(self.start("worker", database_url, free_port(), workdir,
                                          codat_url))
            else:
                servers = [self.start(target, database_url, port, workdir, codat_url)]
            server = servers[0]
            timestamp = int(time.time())
            self.warm_up(port, timestamp)
            requests_file = workdir / "deliveries.bin"
            timestamp = int(time.time())
            workload.write_requests(requests_file, self.stream, secret=self.secret, port=port,
                                    timestamp=timestamp)
            backends_before: dict[int, float] = {}
            if pg_name:
                backends_before = pids_cpu(self.backend_pids(pg_name))
            cpu_before = sum(cpu_seconds(s.pid) for s in servers)
            result = self.wrk(f"http://127.0.0.1:{port}/webhooks/codat", "deliveries.lua",
                              [str(requests_file), str(WRK_THREADS)], workdir, "ingest")
            if with_worker:
                # The storm's CPU: what the requests still in flight need, and no more (a
                # worker drains its backlog after the storm: that is measured by drain()).
                time.sleep(0.25)
            else:
                for each in servers:
                    self.wait_idle(each.pid)
            cpu = sum(cpu_seconds(s.pid) for s in servers) - cpu_before
            backend_cpu = None
            if pg_name:
                after = pids_cpu(self.backend_pids(pg_name))
                backend_cpu = sum(v - backends_before.get(p, 0.0) for p, v in after.items())
            rss = sum(peak_rss_mb(s.pid) for s in servers)
            requests_file.unlink()
            outcome = Result(db, variant, run, result, cpu, backend_cpu, rss, "")
            self.check(outcome, target, database_url, pg_name)
            if with_worker:
                outcome.backlog = self.jobs(database_url)
                if sandbox is not None:
                    self.drain(outcome, database_url, [s.pid for s in servers])
            if queries:
                outcome.queries = self.measure_queries(db, database_url, port, workdir, run)
            for each in servers:
                if each.poll() is not None:
                    outcome.problems.append(f"a server exited ({each.returncode}) during the run")
            return outcome
        except BenchError as exc:
            if server is not None:
                raise BenchError(f"{exc}\n--- {target} log:\n"
                                 + tail(workdir / f"{target}.log")) from exc
            raise
        finally:
            for each in servers:
                self.stop(each)
            if sandbox is not None:
                self.stop(sandbox)
            if pg_name:
                self.drop_pg(pg_name)
            if not a.keep:
                shutil.rmtree(workdir, ignore_errors=True)

    def backend_pids(self, database: str) -> list[int]:
        rows = pg_fetch(self.args.pg_url, "SELECT pid FROM pg_stat_activity WHERE datname = $1 "
                        "AND pid <> pg_backend_pid()", database)
        return [r["pid"] for r in rows]

    def sent_ids(self, sent_by_thread: list[int]) -> set[str]:
        order, deliveries = self.stream.order, self.stream.deliveries
        sent: set[str] = set()
        for thread, count in enumerate(sent_by_thread):
            for k in range(count):
                sent.add(deliveries[order[thread + k * WRK_THREADS]].message_id)
        return sent

    def check(self, outcome: Result, target: str, database_url: str,
              pg_name: str | None) -> None:
        """Deliveries stored == deliveries acknowledged as stored (+ those in flight)."""
        w = outcome.wrk
        problems = outcome.problems
        if w["exhausted"]:
            problems.append(f"wrk ran out of deliveries after {w['sent']} (raise --deliveries)")
        if w["non2xx"]:
            problems.append(f"{w['non2xx']} non-2xx answers {w['statuses']}; first: "
                            f"{w['first_error'][:200]}")
        socket_errors = {k: v for k, v in w["errors"].items() if v and k != "status"}
        if socket_errors:
            problems.append(f"socket errors/timeouts: {socket_errors}")
        if target != "baseline":
            ids_query = "SELECT message_id, outcome FROM deliveries WHERE message_id >= {p}"
        else:
            ids_query = "SELECT message_id, 'stored' AS outcome FROM deliveries " \
                        "WHERE message_id >= {p}"
        if pg_name:
            rows = pg_fetch(database_url, ids_query.format(p='$1 COLLATE "C"'), self.first_id)
            stored = {r["message_id"]: r["outcome"] for r in rows}
        else:
            conn = sqlite3.connect(database_url.split(":///", 1)[1], timeout=30)
            try:
                stored = dict(conn.execute(ids_query.format(p="?"), (self.first_id,)).fetchall())
            finally:
                conn.close()
        sent = self.sent_ids(w.get("sent_by_thread") or [])
        missing_warm = self.warm_ids - stored.keys()
        measured = stored.keys() - self.warm_ids
        unsent = measured - sent
        in_flight = w["sent"] - w["answers"]
        extra = len(measured) - w["stored"]
        outcomes: dict[str, int] = {}
        for value in stored.values():
            outcomes[value] = outcomes.get(value, 0) + 1
        never_stored = len(sent - measured)
        ok = not missing_warm and not unsent and 0 <= extra <= in_flight
        outcome.sanity = (
            f"{'ok' if ok else 'MISMATCH'}: stored {len(measured)} = {w['stored']} "
            f"acknowledged as stored + {extra} whose answer wrk no longer read (it stopped with "
            f"{in_flight} requests unanswered, {never_stored} of them never stored); "
            f"{len(sent)} distinct message ids sent")
        if target != "baseline":
            outcome.sanity += "; outcomes (with the warm-up) " + ", ".join(f"{k} {v}" for k, v in
                                                         sorted(outcomes.items()))
            if set(outcomes) - {"processed"}:
                problems.append(f"deliveries not processed: {outcomes}")
        if not ok:
            problems.append(
                f"database check failed: {len(measured)} stored, {w['stored']} acknowledged "
                f"as stored, {in_flight} in flight, {len(unsent)} stored but never sent, "
                f"{len(missing_warm)} warm-up deliveries missing")

    def measure_queries(self, db: str, database_url: str, port: int, workdir: Path,
                        run: int) -> dict[str, dict[str, Any]]:
        sample = "SELECT id FROM connections WHERE status IS NOT NULL ORDER BY random() " \
                 "LIMIT 10000"
        if db == "sqlite":
            conn = sqlite3.connect(database_url.split(":///", 1)[1], timeout=30)
            try:
                ids = [r[0] for r in conn.execute(sample)]
            finally:
                conn.close()
        else:
            ids = [r["id"] for r in pg_fetch(database_url, sample)]
        if not ids:
            raise BenchError("no connection to query: the ingest run stored none")
        ids_file = workdir / "ids.txt"
        ids_file.write_text("\n".join(ids) + "\n")
        headers = {"Authorization": f"Bearer {self.token}"}
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:  # a few of each first (reader connections, statement caches)
            for path in [f"/v1/connections/{i}" for i in ids[:20]] + [LIST_PATH] * 5:
                c.request("GET", path, headers=headers)
                answer = c.getresponse()
                answer.read()
                if answer.status != 200:
                    raise BenchError(f"GET {path} answered {answer.status}")
        finally:
            c.close()
        base = f"http://127.0.0.1:{port}/"
        return {
            "by_id": self.wrk(base, "query.lua", [self.token, "ids", str(ids_file), str(run)],
                              workdir, "query-by-id"),
            "list": self.wrk(base, "query.lua", [self.token, "list", LIST_PATH], workdir,
                             "query-list"),
        }

    # --- the whole benchmark ------------------------------------------------------------------

    def run(self) -> None:
        a = self.args
        variants = list(a.variants) + (["codat-hooks-large"] if a.large else [])
        for db in self.dbs:
            if a.large:
                self.build_large(db)
            for run in range(1, a.runs + 1):
                shift = (run - 1) % len(variants)  # rotate the order to spread drift
                for variant in variants[shift:] + variants[:shift]:
                    if variant == "codat-hooks-scaled" and db != "postgres":
                        continue  # several receivers on one database: PostgreSQL's way
                    log(f"[{db} run {run}/{a.runs}] {variant} ...")
                    result = self.measure(db, variant, run)
                    self.results.append(result)
                    self.report_run(result)
                    for problem in result.problems:
                        self.problems.append(f"{db} run {run} {variant}: {problem}")
            self.summary(db)
            if a.large and db == "postgres" and self.templates.get(db):
                self.drop_pg(self.templates.pop(db))

    def report_run(self, r: Result) -> None:
        w = r.wrk
        backend = (f" + PostgreSQL backends {r.backend_cpu_us:.0f} µs"
                   if r.backend_cpu_us is not None else "")
        log(f"  {r.rate:8.1f} deliveries/s  p50 {r.latency_ms('p50'):.2f} ms  p99 "
            f"{r.latency_ms('p99'):.2f} ms  max {r.latency_ms('max'):.1f} ms  CPU "
            f"{r.cpu_us:.0f} µs/delivery{backend}  peak RSS {r.rss_mb:.0f} MiB  "
            f"({w['ok']} 2xx in {r.seconds:.2f} s: {w['stored']} stored, {w['duplicate']} "
            f"duplicate; non-2xx {w['non2xx']})")
        log(f"  database check {r.sanity}")
        if r.backlog:
            log("  follow-up jobs when the storm ended: " + ", ".join(
                f"{k} {v}" for k, v in sorted(r.backlog.items())))
        if r.drain_s is not None:
            log(f"  drained {r.drain_s:.1f} s after the storm; CPU with the drain "
                f"{r.total_cpu_us:.0f} µs/delivery")
        for name, q in r.queries.items():
            label = "GET /v1/connections/{id}" if name == "by_id" else f"GET {LIST_PATH}"
            log(f"  {label}: {q['ok'] / (q['duration_us'] / 1e6):.1f} req/s, p50 "
                f"{q['latency_us']['p50'] / 1000:.2f} ms, p99 {q['latency_us']['p99'] / 1000:.2f}"
                f" ms, non-2xx {q['non2xx']}")
        for problem in r.problems:
            log(f"  PROBLEM: {problem}")

    def summary(self, db: str) -> None:
        a = self.args
        rows = [r for r in self.results if r.db == db]
        title = "SQLite" if db == "sqlite" else "PostgreSQL"
        durability = (f"WAL, synchronous={a.sqlite_synchronous}" if db == "sqlite" else
                      f"synchronous_commit={self.pg_facts.get('synchronous_commit')}")
        log("")
        log(f"--- {title} ({durability}): medians of {a.runs} run(s) of {a.duration} s, "
            f"wrk -t{WRK_THREADS} -c{a.connections}, server on 1 CPU ---")
        header = (f"{'target':<22}{'deliveries/s':>13}{'p50 ms':>9}{'p99 ms':>9}"
                  f"{'CPU µs/deliv.':>15}")
        if db == "postgres":
            header += f"{'+PG backends':>14}"
        header += f"{'peak RSS MiB':>14}  runs with problems"
        log(header)
        medians: dict[str, float] = {}
        for variant in (*VARIANTS, "codat-hooks-large"):
            mine = [r for r in rows if r.variant == variant]
            if not mine:
                continue
            rate = statistics.median(r.rate for r in mine)
            medians[variant] = rate
            line = (f"{_label(variant):<22}{rate:>13.1f}"
                    f"{statistics.median(r.latency_ms('p50') for r in mine):>9.2f}"
                    f"{statistics.median(r.latency_ms('p99') for r in mine):>9.2f}"
                    f"{statistics.median(r.cpu_us for r in mine):>15.0f}")
            if db == "postgres":
                backend = [r.backend_cpu_us for r in mine if r.backend_cpu_us is not None]
                line += f"{statistics.median(backend):>14.0f}" if backend else f"{'-':>14}"
            bad = sum(1 for r in mine if r.problems)
            line += f"{statistics.median(r.rss_mb for r in mine):>14.0f}  "
            line += f"{bad} of {len(mine)}" + (" (see PROBLEM lines)" if bad else "")
            log(line)
        for variant in ("codat-hooks", *WORKER_VARIANTS):
            if "baseline" in medians and variant in medians:
                log(f"throughput {_label(variant)} / baseline: "
                    f"{medians[variant] / medians['baseline']:.2f}x")
        for variant in SANDBOX_VARIANTS:
            drained = [r for r in rows if r.variant == variant and r.drain_s is not None]
            if drained:
                log(f"{_label(variant)}: follow-ups drained "
                    f"{statistics.median(r.drain_s or 0 for r in drained):.1f} s after the "
                    f"storm (median); CPU per delivery with them "
                    f"{statistics.median(r.total_cpu_us for r in drained):.0f} µs")
        if "codat-hooks-stock" in medians and "codat-hooks" in medians:
            log(f"throughput with the HTTP limits / without (stock httptools): "
                f"{medians['codat-hooks'] / medians['codat-hooks-stock']:.3f}x")
        if a.large:
            self.large_table(db, rows)
        log("")

    def large_table(self, db: str, rows: list[Result]) -> None:
        a = self.args
        empty = [r for r in rows if r.variant == "codat-hooks"]
        large = [r for r in rows if r.variant == "codat-hooks-large"]
        if not empty or not large:
            return
        log("")
        log(f"codat-hooks on an empty database vs one pre-loaded with {a.large_deliveries:,} "
            f"deliveries and {a.large_connections:,} connections (medians):")
        log(f"{'measure':<58}{'empty':>11}{'large':>11}{'large/empty':>13}")

        def line(label: str, pick: Callable[[Result], float], fmt: str = ".1f") -> None:
            e = statistics.median(pick(r) for r in empty)
            g = statistics.median(pick(r) for r in large)
            ratio = f"{g / e:.2f}x" if e else "-"
            log(f"{label:<58}{e:>11{fmt}}{g:>11{fmt}}{ratio:>13}")

        def q(name: str, key: str) -> Callable[[Result], float]:
            def pick(r: Result) -> float:
                w = r.queries[name]
                if key == "rate":
                    return float(w["ok"]) / (w["duration_us"] / 1e6)
                return float(w["latency_us"][key]) / 1000
            return pick

        line("ingest POST /webhooks/codat deliveries/s", lambda r: r.rate)
        line("ingest p99 ms", lambda r: r.latency_ms("p99"), ".2f")
        line("GET /v1/connections/{id} (random known id) req/s", q("by_id", "rate"))
        line("GET /v1/connections/{id} p99 ms", q("by_id", "p99"), ".2f")
        line(f"GET {LIST_PATH} req/s", q("list", "rate"))
        line(f"GET {LIST_PATH} p99 ms", q("list", "p99"), ".2f")
        log("(empty: a fresh database holding only what that run's ingest stored)")

    def cleanup(self) -> None:
        for server in list(self.servers):
            with contextlib.suppress(Exception):
                self.stop(server)
        for name in list(self.databases):
            try:
                self.drop_pg(name)
            except Exception as exc:
                log(f"could not drop database {name}: {exc}")
        if not self.args.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)
        else:
            log(f"kept {self.tmp}")

    @property
    def dbs(self) -> list[str]:
        return ["sqlite", "postgres"] if self.args.db == "both" else [self.args.db]


def _label(variant: str) -> str:
    return {"codat-hooks-large": "codat-hooks (large DB)",
            "codat-hooks-stock": "codat-hooks, no limits",
            "codat-hooks": "worker off, WARNING",
            "codat-hooks-defaults": "defaults, Codat down",
            "codat-hooks-sandbox": "defaults, sandbox",
            "codat-hooks-scaled": "2 receivers + worker"}.get(variant, variant)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Ingest benchmark: codat-hooks vs a bare baseline (see the module "
                    "docstring of deploy/bench/bench.py).")
    p.add_argument("--db", choices=("sqlite", "postgres", "both"), default="both")
    p.add_argument("--runs", type=int, default=3, help="runs per target and database")
    p.add_argument("--duration", type=int, default=10, help="seconds of load per run")
    p.add_argument("--connections", type=int, default=8, help="wrk connections (-c)")
    p.add_argument("--deliveries", type=int, default=0,
                   help="deliveries planned per run, redeliveries included (default: "
                        "duration x 8,000, at least 20,000); a run that runs out is reported "
                        "as invalid")
    p.add_argument("--large", action="store_true",
                   help="also measure codat-hooks (ingest and query API) on a large database")
    p.add_argument("--large-deliveries", type=int, default=1_000_000)
    p.add_argument("--large-connections", type=int, default=100_000)
    p.add_argument("--warmup", type=int, default=200, help="warm-up deliveries before each run")
    p.add_argument("--sqlite-synchronous", choices=("FULL", "NORMAL"), default="FULL",
                   help="SQLITE_SYNCHRONOUS for both targets (codat-hooks' default: FULL)")
    p.add_argument("--pg-url", default=os.environ.get(
        "BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="an admin connection; bench_* databases are created and dropped there")
    p.add_argument("--server-cpu", type=int, default=0)
    p.add_argument("--client-cpu", type=int, default=1)
    p.add_argument("--workdir", default="/var/tmp",
                   help="where temporary files and SQLite databases go (a real disk: fsync "
                        "matters)")
    p.add_argument("--seed", type=int, default=20261124)
    p.add_argument("--max-minutes", type=float, default=0,
                   help="stop (and clean up) after this long (default: from the settings)")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="a codat-hooks setting for its server (e.g. DB_WRITE_PARTITIONS=2)")
    p.add_argument("--keep", action="store_true", help="keep temporary files (logs, SQLite)")
    p.add_argument("--variants", default=",".join(VARIANTS[:4]),
                   help="comma-separated servers to alternate: baseline; codat-hooks (its "
                        "worker off, logs at WARNING); codat-hooks-defaults (as `serve` runs "
                        "by default: the embedded worker, logs at INFO; Codat unreachable); "
                        "codat-hooks-sandbox (the same, Codat answered by the sandbox, which "
                        "knows every company of the storm; the follow-ups are drained and "
                        "timed after it); codat-hooks-scaled (PostgreSQL: two `serve "
                        "--reuse-port` receivers and one `codat-hooks worker`, the sandbox "
                        "answering); codat-hooks-stock (worker off, on uvicorn's stock "
                        "httptools protocol, without the HTTP limits: what the limits cost)")
    args = p.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not args.variants or set(args.variants) - set(VARIANTS):
        p.error(f"--variants: a comma-separated list of {', '.join(VARIANTS)}")
    if args.runs < 1 or args.duration < 1 or args.connections < WRK_THREADS:
        p.error("--runs and --duration must be at least 1, --connections at least 2")
    if args.duration > 240:
        p.error("--duration must be at most 240 s: every delivery is signed before the run "
                "and svix refuses timestamps older than 5 minutes")
    if args.deliveries <= 0:
        args.deliveries = max(20_000, args.duration * 8_000)
    if args.large and args.large_deliveries < 3 * args.large_connections:
        p.error("--large-deliveries must be at least 3 x --large-connections")
    return args


def time_budget(args: argparse.Namespace) -> float:
    """Seconds the whole benchmark may take: generous, but bounded."""
    dbs = 2 if args.db == "both" else 1
    per_run = (args.duration + 90) * len(args.variants)
    per_run += DRAIN_LIMIT_S * len(set(SANDBOX_VARIANTS) & set(args.variants))
    if args.large:
        per_run += (args.duration * 3 + 120) * 2
    prefill = (args.large_deliveries / 2_000 + 600) if args.large else 0
    return dbs * (args.runs * per_run + prefill) + 300


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    budget = args.max_minutes * 60 or time_budget(args)

    def on_signal(signum: int, frame: Any) -> None:
        if signum == signal.SIGALRM:
            raise TimeLimit(f"the benchmark took longer than {budget / 60:.0f} minutes")
        raise KeyboardInterrupt

    signal.signal(signal.SIGALRM, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    signal.alarm(math.ceil(budget))
    started = time.monotonic()
    bench = Bench(args)
    try:
        bench.check_tools()
        bench.prepare()
        bench.facts()
        bench.run()
    except (BenchError, TimeLimit) as exc:
        log(f"\nBENCHMARK FAILED: {exc}")
        return 2
    except KeyboardInterrupt:
        log("\ninterrupted")
        return 2
    finally:
        signal.alarm(0)
        bench.cleanup()
    log(f"load average at end {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} "
        f"{os.getloadavg()[2]:.2f}; total time {time.monotonic() - started:.0f} s; "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    if bench.problems:
        log(f"\n{len(bench.problems)} PROBLEM(S); the figures above include the affected "
            "runs:")
        for problem in bench.problems:
            log(f"  - {problem}")
        return 1
    log("all runs clean: no non-2xx answers, no socket errors, database checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

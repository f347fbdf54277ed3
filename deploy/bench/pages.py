"""The on-call pages' latency on a large database: p50 and p99 of each page.

    .venv/bin/python deploy/bench/pages.py [--db sqlite|postgres|both] [--requests 200]
        [--large-deliveries 1000000] [--large-connections 100000]

Loads the benchmark's large data set (deploy/bench/bench.py's loader: 1,000,000 deliveries and
100,000 connections over 90 days, their companies and history), starts ``codat-hooks serve``
on it pinned to CPU 0, and asks each page ``--requests`` times in turn, one request at a time
(keep-alive), on ids sampled at random: the home page (charts included), the search by each
kind of id and by a name's start, a company's story, a delivery, and the lists. Prints a table
of p50/p99 per page and database. Exit status 1 when a page answered anything unexpected.
"""

from __future__ import annotations

import argparse
import http.client
import random
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE)]

import bench  # noqa: E402

SAMPLE = """
SELECT d.message_id, d.event_id, d.company_id, d.connection_id, co.name
FROM deliveries d JOIN companies co ON co.id = d.company_id
WHERE d.message_id >= '{start}' ORDER BY d.message_id LIMIT 1"""


def sample(db: str, url: str, count: int, seed: int) -> list[dict[str, Any]]:
    """``count`` stored deliveries picked at random (by a random start of the message id)."""
    rng = random.Random(seed)
    picked = []
    for _ in range(count):
        start = "msg_" + "".join(rng.choice("0123456789ABCDEFGHJKMNPQRSTVWXYZ") for _ in range(4))
        query = SAMPLE.format(start=start)
        if db == "sqlite":
            conn = sqlite3.connect(url.split(":///", 1)[1])
            conn.row_factory = sqlite3.Row
            rows = [dict(r) for r in conn.execute(query)]
            conn.close()
        else:
            rows = [dict(r) for r in bench.pg_fetch(url, query)]
        picked += rows
    if not picked:
        raise bench.BenchError("no delivery to sample: the database is empty")
    return picked


def pages(samples: list[dict[str, Any]]) -> dict[str, Callable[[int], str]]:
    def pick(i: int) -> dict[str, Any]:
        return samples[i % len(samples)]

    def q(value: str) -> str:
        return quote(value, safe="")
    return {
        "home (summary, charts, lists)": lambda i: "/oncall",
        "search: company id": lambda i: f"/oncall/search?q={q(pick(i)['company_id'])}",
        "search: name's start": lambda i: f"/oncall/search?q={q(pick(i)['name'][:4])}",
        "search: connection id": lambda i: f"/oncall/search?q={q(pick(i)['connection_id'])}",
        "search: message id": lambda i: f"/oncall/search?q={q(pick(i)['message_id'])}",
        "search: event id": lambda i: f"/oncall/search?q={q(pick(i)['event_id'])}",
        "company (story, timeline)": lambda i: f"/oncall/companies/{q(pick(i)['company_id'])}",
        "delivery": lambda i: f"/oncall/deliveries/{q(pick(i)['message_id'])}",
        "list: connections Deauthorized": lambda i: "/oncall/connections?state=Deauthorized",
        "list: transitions": lambda i: "/oncall/transitions",
        "list: deliveries processed": lambda i: "/oncall/deliveries?outcome=processed",
        "list: jobs dead": lambda i: "/oncall/jobs?status=dead",
    }


def measure(port: int, token: str, paths: Callable[[int], str], requests: int,
            problems: list[str]) -> list[float]:
    headers = {"Authorization": f"Bearer {token}"}
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    timings = []
    try:
        for i in range(requests + 5):  # five to warm up (reader connections, caches)
            path = paths(i)
            started = time.perf_counter()
            c.request("GET", path, headers=headers)
            answer = c.getresponse()
            body = answer.read()
            elapsed = time.perf_counter() - started
            if answer.status not in (200, 303):
                problems.append(f"GET {path} answered {answer.status}: {body[:200]!r}")
            if i >= 5:
                timings.append(elapsed)
    finally:
        c.close()
    return timings


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def run(b: bench.Bench, db: str, requests: int, problems: list[str]) -> dict[str, list[float]]:
    b.build_large(db)
    template = b.templates[db]
    url = f"sqlite:///{template}" if db == "sqlite" else bench.pg_url(b.args.pg_url, template)
    workdir = b.tmp / f"{db}-pages"
    workdir.mkdir()
    picked = sample(db, url, 100, b.args.seed)
    port = bench.free_port()
    server = b.start("codat-hooks", url, port, workdir)
    try:
        results = {}
        for name, paths in pages(picked).items():
            results[name] = measure(port, b.token, paths, requests, problems)
            bench.log(f"[{db}] {name:<34} p50 {statistics.median(results[name]) * 1000:7.1f} ms"
                      f"   p99 {p99(results[name]) * 1000:7.1f} ms")
        return results
    finally:
        b.stop(server)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--db", choices=("sqlite", "postgres", "both"), default="both")
    p.add_argument("--requests", type=int, default=200, help="requests per page")
    p.add_argument("--large-deliveries", type=int, default=1_000_000)
    p.add_argument("--large-connections", type=int, default=100_000)
    p.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--workdir", default="/var/tmp")
    p.add_argument("--seed", type=int, default=20261125)
    p.add_argument("--keep", action="store_true", help="keep the databases and logs")
    a = p.parse_args(argv)
    args = bench.parse_args([
        "--db", a.db, "--large", "--large-deliveries", str(a.large_deliveries),
        "--large-connections", str(a.large_connections), "--pg-url", a.pg_url,
        "--workdir", a.workdir, "--seed", str(a.seed), *(["--keep"] if a.keep else [])])
    b = bench.Bench(args)
    problems: list[str] = []
    results: dict[str, dict[str, list[float]]] = {}
    try:
        for db in b.dbs:
            results[db] = run(b, db, a.requests, problems)
    finally:
        b.cleanup()
    bench.log(f"--- on-call pages with {a.large_deliveries:,} deliveries and "
              f"{a.large_connections:,} connections stored, {a.requests} requests each, "
              "one at a time: p50 / p99 ms ---")
    dbs = list(results)
    bench.log(f"{'page':<36}" + "".join(f"{db:>22}" for db in dbs))
    for name in pages([{}]):
        cells = "".join(f"{statistics.median(results[db][name]) * 1000:>12.1f} / "
                        f"{p99(results[db][name]) * 1000:>6.1f}" for db in dbs)
        bench.log(f"{name:<36}{cells}")
    for problem in problems:
        bench.log(f"problem: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

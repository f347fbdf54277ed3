"""deploy/observability: the alert rules (promtool check and unit tests), the runbook they link,
the Grafana dashboard, and all of them against a real Prometheus scraping a real codat-hooks
whose faults are injected for real (a bad-signature burst, the database made unwritable, a job
driven dead against the sandbox): the matching alerts fire, and every dashboard query runs.

Debian's ``prometheus`` package brings ``prometheus`` and ``promtool``; it is installed when
missing and possible (as root), and the tests that need it skip cleanly, saying why, elsewhere.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import sqlite3
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from service.localserver import free_port
from service.metrics import Metrics
from tests.debian import installed_or_skip
from tests.factories import SECRET, TOKEN, sign
from tests.processes import Proc, log_tail, service_env, spawn, start_receiver, wait_ready

ROOT = Path(__file__).resolve().parents[1]
OBSERVABILITY = ROOT / "deploy" / "observability"
RULES = OBSERVABILITY / "alerts.yml"
RULE_TESTS = OBSERVABILITY / "alerts.test.yml"
DASHBOARD = OBSERVABILITY / "grafana-dashboard.json"
RUNBOOK = ROOT / "docs" / "runbook.md"
PROMETHEUS = Path("/usr/bin/prometheus")
PROMTOOL = Path("/usr/bin/promtool")
SANDBOX_KEY = "observability-sandbox-key-3f9a"
WRONG_SECRET = "whsec_" + base64.b64encode(b"not the secret codat-hooks knows").decode()


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard_targets() -> list[tuple[str, str]]:
    """(panel title, expr) of every query of the dashboard, rows' panels included."""
    def walk(panels: list[dict[str, Any]]) -> list[tuple[str, str]]:
        found = []
        for panel in panels:
            found += [(panel["title"], t["expr"]) for t in panel.get("targets", [])]
            found += walk(panel.get("panels", []))
        return found
    return walk(json.loads(DASHBOARD.read_text())["panels"])


# --- without Prometheus -------------------------------------------------------------------------

def test_each_issue_alert_exists_with_a_runbook_entry_that_says_what_to_do() -> None:
    alerts = {rule["alert"]: rule for rule in rules()}
    assert {"CodatHooksDeliveriesFailing", "CodatHooksSignatureRefusalsRising",
            "CodatHooksDatabaseUnavailable", "CodatHooksDeadJobs", "CodatHooksJobBacklogAging",
            "CodatHooksCodatRateLimited", "CodatHooksWorkerNotHeartbeating",
            "CodatHooksReceiverNotReady"} <= set(alerts)
    runbook = RUNBOOK.read_text()
    headings = {m[1].lower(): m.start() for m in re.finditer(r"^## (\S+)$", runbook, re.M)}
    for name, rule in alerts.items():
        url = rule["annotations"]["runbook_url"]
        assert url == f"docs/runbook.md#{name.lower()}", (name, url)
        assert name.lower() in headings, f"docs/runbook.md has no entry for {name}"
        start = headings[name.lower()]
        following = [s for s in headings.values() if s > start]
        entry = runbook[start:min(following, default=len(runbook))]
        for part in ("**Means.**", "**Confirm.**", "**Fix.**"):
            assert part in entry, f"{name}: no {part} in its runbook entry"
        assert "codat-hooks " in entry or "/readyz" in entry, f"{name}: no command to run"
        assert rule["labels"]["severity"] in ("page", "ticket"), name


def _exported_names() -> set[str]:
    """Every series name the service's /metrics can export."""
    names = set()
    for collector in Metrics().registry._collector_to_names:
        for family in collector.describe():
            kind, base = family.type, family.name
            names |= ({f"{base}_total", f"{base}_created"} if kind == "counter" else
                      {f"{base}_bucket", f"{base}_count", f"{base}_sum", f"{base}_created"}
                      if kind == "histogram" else {base})
    return names


def test_rules_and_dashboard_use_only_metrics_the_service_exports() -> None:
    exported = _exported_names()
    used = set(re.findall(r"codat_hooks_[a-z_]+", RULES.read_text()))
    for _, expr in dashboard_targets():
        used |= set(re.findall(r"codat_hooks_[a-z_]+", expr))
    assert used, "no metric found: the pattern is wrong"
    assert used <= exported, f"not exported by codat-hooks: {sorted(used - exported)}"


def test_the_dashboard_is_a_grafana_dashboard_over_every_area() -> None:
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] == "codat-hooks" and board["schemaVersion"] >= 36
    panels = board["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        for target in panel.get("targets", []):
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    [datasource] = board["templating"]["list"]
    assert (datasource["name"], datasource["type"]) == ("datasource", "datasource")
    exprs = " ".join(expr for _, expr in dashboard_targets())
    for area in ("codat_hooks_deliveries_total", "codat_hooks_request_seconds_bucket",
                 "codat_hooks_deliveries_rejected_total", "codat_hooks_transitions_total",
                 "codat_hooks_outbox_jobs", "codat_hooks_job_runs_total",
                 "codat_hooks_codat_calls_total", "codat_hooks_codat_quota_remaining"):
        assert area in exprs, f"the dashboard shows nothing of {area}"


# --- promtool -----------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def promtool() -> Path:
    return installed_or_skip(PROMTOOL, "prometheus")


@pytest.fixture(scope="session")
def prometheus() -> Path:
    return installed_or_skip(PROMETHEUS, "prometheus")


def test_promtool_checks_the_rules(promtool: Path) -> None:
    done = subprocess.run([str(promtool), "check", "rules", str(RULES)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules())} rules found" in done.stdout


def test_promtool_unit_tests_every_alert(promtool: Path) -> None:
    tested = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text()))
    assert tested == {rule["alert"] for rule in rules()}, "an alert without a unit test"
    done = subprocess.run([str(promtool), "test", "rules", str(RULE_TESTS)], capture_output=True,
                          text=True, timeout=120, check=False, cwd=OBSERVABILITY)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_promtool_unit_tests_can_fail(promtool: Path, tmp_path: Path) -> None:
    # The same tests against rules whose threshold is out of reach: promtool says FAILED.
    broken = RULES.read_text().replace("> 0.05", "> 5")
    (tmp_path / "alerts.yml").write_text(broken)
    (tmp_path / "alerts.test.yml").write_text(RULE_TESTS.read_text())
    done = subprocess.run([str(promtool), "test", "rules", "alerts.test.yml"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode != 0
    assert "CodatHooksDeliveriesFailing" in done.stdout + done.stderr


# --- a real Prometheus scraping a real codat-hooks ----------------------------------------------

def quick_rules() -> dict[str, Any]:
    """The real rules with every ``for:`` at 0 s, so a test sees them fire within seconds; the
    expressions, thresholds and labels are the real ones (promtool tests the ``for:``s)."""
    document = yaml.safe_load(RULES.read_text())
    for group in document["groups"]:
        group["interval"] = "1s"
        for rule in group["rules"]:
            rule["for"] = "0s"
    return document


@contextlib.contextmanager
def running_prometheus(binary: Path, workdir: Path, receiver: str) -> Any:
    port = free_port()
    (workdir / "alerts.yml").write_text(yaml.safe_dump(quick_rules()))
    (workdir / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s",
                   "scrape_timeout": "900ms"},
        "rule_files": ["alerts.yml"],
        "scrape_configs": [{"job_name": "codat-hooks",
                            "static_configs": [{"targets": [receiver]}]}]}))
    log = (workdir / "prometheus.log").open("ab")
    try:
        popen = subprocess.Popen(
            [str(binary), f"--config.file={workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={workdir / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}",
             "--log.level=warn"], cwd=workdir, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT)
    except BaseException:
        log.close()
        raise
    try:
        yield f"http://127.0.0.1:{port}", popen
    finally:
        popen.kill()
        popen.wait(timeout=10)
        log.close()


async def eventually(check: Callable[[], Awaitable[Any]], *, timeout: float, what: str,
                     explain: Callable[[], str] = lambda: "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}\n{explain()}")
        await asyncio.sleep(0.25)


@contextlib.asynccontextmanager
async def started(procs: list[Proc]) -> AsyncIterator[list[Proc]]:
    try:
        yield procs
    finally:
        for proc in procs:
            await asyncio.to_thread(proc.kill)


@pytest.mark.slow
async def test_faults_fire_their_alerts_in_a_real_prometheus_and_the_dashboard_queries_run(
        prometheus: Path, tmp_path: Path) -> None:
    database = tmp_path / "hooks.db"
    sandbox_port = free_port()
    sandbox_url = f"http://127.0.0.1:{sandbox_port}"
    env = service_env(
        codat_webhook_secrets=SECRET, database_url=f"sqlite:///{database}",
        service_api_tokens=TOKEN, codat_api_key=SANDBOX_KEY, codat_base_url=sandbox_url,
        worker_enabled="true", worker_poll_seconds=0.1, outbox_max_attempts=1,
        sqlite_busy_timeout_ms=200, db_retry_after_seconds=1, log_level="WARNING")
    async with started([]) as procs, httpx.AsyncClient(timeout=10, trust_env=False) as client:
        receiver = await start_receiver("receiver", env=env, cwd=tmp_path, log_dir=tmp_path)
        procs.append(receiver)
        sandbox = spawn("sandbox", ["sandbox", "--port", str(sandbox_port), "--webhook-url",
                                    f"{receiver.url}/webhooks/codat"],
                        env=env, cwd=tmp_path, log_dir=tmp_path)
        procs.append(sandbox)
        await wait_ready(sandbox, sandbox_url, path="/_sandbox/calls")
        target = str(receiver.url).removeprefix("http://")
        with running_prometheus(prometheus, tmp_path, target) as (prom, server):
            def explain() -> str:
                return (f"--- prometheus ---\n{log_tail(tmp_path / 'prometheus.log')}\n"
                        f"--- receiver ---\n{receiver.tail()}\n--- sandbox ---\n"
                        f"{sandbox.tail()}")

            async def scraped() -> bool:
                with contextlib.suppress(httpx.HTTPError):
                    answer = await client.get(f"{prom}/api/v1/query",
                                              params={"query": 'up{job="codat-hooks"}'})
                    results = answer.json()["data"]["result"]
                    return bool(results) and results[0]["value"][1] == "1"
                return False
            await eventually(scraped, timeout=30, what="Prometheus scraping codat-hooks",
                             explain=explain)

            await _drive_a_job_dead(client, sandbox_url, receiver)
            await _bad_signature_burst(client, str(receiver.url))
            async with _database_locked(database):
                answers = [await _deliver(client, str(receiver.url)) for _ in range(10)]
            assert [a.status_code for a in answers] == [503] * 10, [a.text for a in answers]

            wanted = {"CodatHooksDeadJobs", "CodatHooksSignatureRefusalsRising",
                      "CodatHooksDatabaseUnavailable", "CodatHooksDeliveriesFailing"}

            async def firing() -> dict[str, dict[str, Any]] | None:
                answer = await client.get(f"{prom}/api/v1/alerts")
                alerts = {a["labels"]["alertname"]: a for a in answer.json()["data"]["alerts"]
                          if a["state"] == "firing"}
                return alerts if wanted <= set(alerts) else None
            alerts = await eventually(firing, timeout=30, what=f"alerts firing: {wanted}",
                                      explain=explain)
            for name in wanted:
                assert alerts[name]["annotations"]["runbook_url"] == \
                    f"docs/runbook.md#{name.lower()}"
            assert alerts["CodatHooksDeadJobs"]["labels"]["severity"] == "ticket"
            assert float(alerts["CodatHooksDeadJobs"]["value"]) == 1
            # What did not happen does not fire: the receiver stayed ready, its worker beats.
            assert "CodatHooksReceiverNotReady" not in alerts
            assert "CodatHooksNoWorker" not in alerts
            assert "CodatHooksWorkerNotHeartbeating" not in alerts
            await _every_dashboard_query_runs(client, prom)
            assert server.poll() is None, explain()


async def _deliver(client: httpx.AsyncClient, base: str,
                   secret: str = SECRET) -> httpx.Response:
    body = json.dumps({"id": str(uuid.uuid4()), "eventType": "connection.created",
                       "generatedDate": "2026-11-25T10:00:00Z", "payload": {}}).encode()
    return await client.post(f"{base}/webhooks/codat", content=body,
                             headers=sign(body, secret=secret))


async def _bad_signature_burst(client: httpx.AsyncClient, base: str) -> None:
    # A secret rotated at Codat and not added here: every delivery is refused, 401.
    answers = [await _deliver(client, base, secret=WRONG_SECRET) for _ in range(30)]
    assert {a.status_code for a in answers} == {401}


@contextlib.asynccontextmanager
async def _database_locked(path: Path) -> AsyncIterator[None]:
    """Another process's write transaction holds SQLite's write lock: codat-hooks cannot write
    (each write waits SQLITE_BUSY_TIMEOUT_MS, then answers 503); it can still read."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=5)
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


async def _drive_a_job_dead(client: httpx.AsyncClient, sandbox: str, receiver: Proc) -> None:
    """A company onboarded at the sandbox; the SMB authorizes; the sandbox's signed webhooks
    reach the receiver; its confirm job calls the sandbox, which refuses (403) for good."""
    auth = {"Authorization": "Basic " + base64.b64encode(SANDBOX_KEY.encode()).decode()}
    company = await client.post(f"{sandbox}/companies", json={"name": "Alerting Ltd"},
                                headers=auth)
    assert company.status_code == 200, company.text
    company_id = company.json()["id"]
    connection = await client.post(f"{sandbox}/companies/{company_id}/connections",
                                   json={"platformKey": "qhyg"}, headers=auth)
    assert connection.status_code == 200, connection.text
    connection_id = connection.json()["id"]
    fault = await client.post(f"{sandbox}/_sandbox/faults", json={
        "method": "GET", "path": f"/connections/{connection_id}$", "status": 403, "count": 5})
    assert fault.status_code == 201, fault.text
    linked = await client.post(
        f"{sandbox}/_sandbox/companies/{company_id}/connections/{connection_id}/authorize")
    assert linked.status_code == 200, linked.text

    async def dead() -> bool:
        answer = await client.get(f"{receiver.url}/v1/outbox", params={"status": "dead"},
                                  headers={"Authorization": f"Bearer {TOKEN}"})
        return any(j["connectionId"] == connection_id for j in answer.json()["results"])
    await eventually(dead, timeout=30, what="the confirm job dead", explain=receiver.tail)


async def _every_dashboard_query_runs(client: httpx.AsyncClient, prom: str) -> None:
    with_data = []
    for title, expr in dashboard_targets():
        query = expr.replace("$__rate_interval", "30s")
        answer = await client.get(f"{prom}/api/v1/query", params={"query": query})
        body = answer.json()
        assert answer.status_code == 200 and body["status"] == "success", (title, expr, body)
        assert "warnings" not in body, (title, body["warnings"])
        if body["data"]["result"]:
            with_data.append(title)
    for title in ("Deliveries by outcome", "Webhook answers by status class",
                  "Answered 503: database unavailable", "Refused before storage, by reason",
                  "Jobs by status", "Job runs by kind and result",
                  "Codat calls by endpoint and status", "Webhook latency",
                  "Seconds since each worker's heartbeat", "Dead jobs", "Receivers ready"):
        assert title in with_data, f"{title!r} drew nothing from the scraped service"


def test_metrics_text_names_parse() -> None:
    # The parser the tests use reads what the service writes (a guard for _exported_names).
    text = "# TYPE codat_hooks_ready gauge\ncodat_hooks_ready 1\n"
    assert [f.name for f in text_string_to_metric_families(text)] == ["codat_hooks_ready"]

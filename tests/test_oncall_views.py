"""The on-call pages beyond the home page, over HTTP on SQLite and PostgreSQL: names beside
ids, the search finding each kind of id, a company's story and its timeline page by page, a
delivery, the long lists page by page, and the charts drawn with data. Data is made through
the service's own code paths (signed deliveries, the worker against a refusing Codat)."""

from __future__ import annotations

import re
import uuid

import orjson
import pytest

from tests.conftest import Service
from tests.factories import TOKEN, at, connection_body, new_id, read_completed_body, sign
from tests.test_oncall_page import oncall, seed  # noqa: F401  (the fixture)

CSP = ("default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
       "frame-ancestors 'none'")


async def page(service: Service, path: str, status: int = 200, **params: str) -> str:
    # (httpx would drop a query string in ``path`` for an empty ``params``)
    response = await (service.get(path, **params) if params else service.client.get(
        path, headers={"authorization": f"Bearer {TOKEN}"}))
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-security-policy"] == CSP
    assert "<script" not in response.text.lower()
    return response.text


async def found(service: Service, query: str) -> str:
    """Where the search sends a single exact id (a 303), or the results page."""
    response = await service.get("/oncall/search", q=query)
    if response.status_code == 303:
        return str(response.headers["location"])
    assert response.status_code == 200, response.text[:300]
    return response.text


def bars(html: str, label: str) -> int:
    match = re.search(rf'aria-label="{re.escape(label)}" data-bars="(\d+)"', html)
    assert match, f"no chart {label!r}"
    return int(match[1])


async def named_company(service: Service, name: str) -> tuple[str, str, list[str]]:
    """A company called ``name`` with a Linked connection; the message ids that linked it."""
    company, connection = new_id(), new_id()
    messages = []
    for second, (kind, status) in enumerate([("connection.created", "PendingAuth"),
                                             ("connection.connected", "Linked")]):
        body = orjson.loads(connection_body(kind, company_id=company, connection_id=connection,
                                            status=status, generated=at(100 + second)))
        body["payload"]["referenceCompany"]["name"] = name
        raw = orjson.dumps(body)
        message = f"msg_{uuid.uuid4().hex}"
        response = await service.client.post("/webhooks/codat", content=raw,
                                             headers=sign(raw, msg_id=message))
        assert response.status_code == 200, response.text
        messages.append(message)
    return company, connection, messages


async def test_names_are_beside_ids_on_the_home_page(oncall: Service) -> None:  # noqa: F811
    seeded = await seed(oncall)
    home = await page(oncall, "/oncall")
    for anchor in ("connections", "transitions", "dead"):
        part = home[home.index(f'<h2 id="{anchor}"'):]
        part = part[:part.find("<h2 ", 10)]
        assert '<a href="/oncall/companies/' in part and ">Toft stores</a>" in part, anchor
    assert seeded.deauthorized in home


async def test_the_search_finds_each_kind_of_id_and_names_by_their_start(
        oncall: Service) -> None:  # noqa: F811
    seeded = await seed(oncall)
    company, connection, messages = await named_company(oncall, "Quayside Bakery")
    await named_company(oncall, "Quayside Books")
    [delivery] = await oncall.rows("SELECT event_id FROM deliveries WHERE message_id = $1",
                                   messages[0])
    [job] = await oncall.rows("SELECT id FROM outbox WHERE company_id = $1", company)

    assert await found(oncall, company) == f"/oncall/companies/{company}"
    assert await found(oncall, connection) == f"/oncall/companies/{company}#{connection}"
    assert await found(oncall, f"  {messages[0]} ") == f"/oncall/deliveries/{messages[0]}"
    assert await found(oncall, delivery["event_id"]) == f"/oncall/deliveries/{messages[0]}"
    assert await found(oncall, job["id"]) == f"/oncall/companies/{company}"
    assert (await found(oncall, seeded.dead_jobs[0])).startswith("/oncall/companies/")
    for typed in ("Quayside", "quayside", "QUAYSIDE", "quayside b"):
        results = await found(oncall, typed)
        assert "Quayside Bakery" in results and "Quayside Books" in results, typed
        assert results.count('class="name">Quayside') == 2
    only = await found(oncall, "Quayside Bo")
    assert "Quayside Books" in only and "Quayside Bakery" not in only
    nothing = await found(oncall, "<b>nobody</b>")
    assert "Nothing found for &#x27;&lt;b&gt;nobody&lt;/b&gt;&#x27;." in nothing
    assert 'value="&lt;b&gt;nobody&lt;/b&gt;"' in nothing  # the box keeps what was typed
    assert "Type something" in await found(oncall, "")


async def test_a_company_page_tells_its_story(oncall: Service) -> None:  # noqa: F811
    seeded = await seed(oncall)
    [row] = await oncall.rows("SELECT company_id FROM connections WHERE id = $1",
                              seeded.deauthorized)
    company = row["company_id"]
    await oncall.deliver(read_completed_body(company_id=company, connection_id=seeded.rejected,
                                             statuses={"bills": "FetchError"},
                                             generated=at(50)))
    html = await page(oncall, f"/oncall/companies/{company}")
    assert "<h2 id=\"company\">Toft stores</h2>" in html
    assert '<span class="b bad">not ready</span>' in html
    why = html[html.index('<h3 id="why">'):html.index('<h2 id="connections">')]
    assert "readiness not checked yet" in why  # its confirm job died: Codat is unreachable
    connections = html[html.index('<h2 id="connections">'):html.index('id="data-types"')]
    assert f'<span id="{seeded.deauthorized}">' in connections
    assert '<span class="b bad">Deauthorized</span>' in connections
    assert '<span class="b ok">Linked</span>' in connections
    assert "bills" in html[html.index('id="data-types"'):]
    commands = html[html.index('<h2 id="commands">'):html.index('<h2 id="timeline">')]
    assert f"codat-hooks reconcile --company {company}" in commands
    for job in seeded.dead_jobs:
        assert f"codat-hooks outbox retry {job} --apply" in commands
    timeline = html[html.index('<h2 id="timeline">'):]
    stamps = re.findall(r'<time datetime="([^"]+)">', timeline)
    assert stamps == sorted(stamps, reverse=True) and len(stamps) >= 12
    assert timeline.count("→") == 5  # five moves: three of one connection, two of the other
    assert "delivery <span" in timeline and "job confirm_connection" in timeline
    assert "Linked → PendingAuth" in timeline and '<span class="b bad">rejected</span>' in \
        timeline
    await page(oncall, f"/oncall/companies/{new_id()}", 404)


async def test_a_long_timeline_pages_without_losing_or_repeating_anything(
        oncall: Service) -> None:  # noqa: F811
    company, connection, _ = await named_company(oncall, "Long Story Ltd")
    for _ in range(70):  # reads, each a delivery and a readiness job
        await oncall.deliver(read_completed_body(company_id=company, connection_id=connection,
                                                 statuses={"bills": "Complete"},
                                                 generated=at(200)))
    seen: list[str] = []
    path, pages = f"/oncall/companies/{company}", 0
    while True:
        html = await page(oncall, path)
        timeline = html[html.index('<h2 id="timeline">'):]
        seen += re.findall(r'<time datetime="([^"]+)">', timeline)
        pages += 1
        match = re.search(r'<a href="([^"]+)">older »</a>', timeline)
        if not match:
            break
        path = match[1].replace("&amp;", "&")
        assert pages < 10
    total = 2 + 72 + 1 + 70  # moves, deliveries, the confirm job, readiness jobs
    assert pages == 3 and len(seen) == total
    assert seen == sorted(seen, reverse=True)
    await page(oncall, f"/oncall/companies/{company}", 400, before="not-a-cursor")


async def test_a_delivery_page_shows_headers_body_and_what_it_caused(
        oncall: Service) -> None:  # noqa: F811
    seeded = await seed(oncall)
    company, _, messages = await named_company(oncall, "Harbour & <Co>")
    html = await page(oncall, f"/oncall/deliveries/{messages[1]}")
    assert "Harbour &amp; &lt;Co&gt;" in html and f"/oncall/companies/{company}" in html
    assert "<code>svix-id</code>" in html and "svix-signature" not in html
    body = html[html.index('<h2 id="body">'):html.index('<h2 id="moves">')]
    assert '&quot;eventType&quot;: &quot;connection.connected&quot;' in body
    assert "\n  &quot;payload&quot;: {" in body  # pretty-printed
    moves = html[html.index('<h2 id="moves">'):html.index('<h2 id="jobs">')]
    assert "PendingAuth" in moves and "Linked" in moves and "applied" in moves
    assert "confirm_connection" in html[html.index('<h2 id="jobs">'):]
    assert f"codat-hooks replay {messages[1]} --apply" in html
    failed = await page(oncall, f"/oncall/deliveries/{seeded.failed}")
    assert '<span class="b bad">failed</span>' in failed
    assert "&lt;script&gt;alert(&#x27;failed&#x27;)&lt;/script&gt;" in failed
    unparseable = await page(oncall, f"/oncall/deliveries/{seeded.unparseable}")
    assert "&lt;script&gt;alert(&quot;body&quot;)&lt;/script&gt;" in unparseable
    await page(oncall, f"/oncall/deliveries/{uuid.uuid4().hex}", 404)


async def test_the_lists_page_by_cursor(oncall: Service) -> None:  # noqa: F811
    company = new_id()
    for n in range(60):  # 60 connections Deauthorized: 180 moves
        connection = new_id()
        for second, (kind, status) in enumerate([
                ("connection.created", "PendingAuth"), ("connection.connected", "Linked"),
                ("connection.disconnected", "Deauthorized")]):
            await oncall.deliver(connection_body(kind, company_id=company,
                                                 connection_id=connection, status=status,
                                                 generated=at(n * 10 + second)))
    for path, per_page, total in (("/oncall/transitions", 50, 180),
                                  ("/oncall/connections?state=Deauthorized", 50, 60)):
        rows, url, pages = [], path, 0
        while url:
            html = await page(oncall, url)
            body = html[html.index("<tbody>"):html.index("</tbody>")]
            rows += re.findall(r"<tr>(.*?)</tr>", body)
            pages += 1
            match = re.search(r'<a href="([^"]+)">older »</a>', html)
            url = match[1].replace("&amp;", "&") if match else ""
            assert pages < 10, f"{path}: the pages do not end"
        assert len(rows) == total and len(set(rows)) == total, path
        assert pages == -(-total // per_page)
    assert "Toft stores" in await page(oncall, "/oncall/connections", state="Deauthorized")
    await page(oncall, "/oncall/connections", 400, state="Bewildered")
    await page(oncall, "/oncall/transitions", 400, before="garbage")
    for path in ("/oncall/deliveries?outcome=processed", "/oncall/jobs?status=pending",
                 "/oncall/conflicts"):
        await page(oncall, path)


async def test_the_charts_are_drawn_with_data(oncall: Service) -> None:  # noqa: F811
    await seed(oncall)
    body = b'{"id": "x"}'
    for _ in range(3):
        await oncall.client.post("/webhooks/codat", content=body,
                                 headers={**sign(body), "svix-signature": "v1,bad"})
    html = await page(oncall, "/oncall")
    hour = bars(html, "deliveries per minute by outcome, last hour")
    assert hour >= 3  # processed, unparseable and failed, in this minute or the last
    assert bars(html, "deliveries per quarter hour by outcome, last 24 hours") >= 3
    assert bars(html, "refusals by reason, last 24 hours") >= 1
    assert bars(html, "transitions by target state, last 24 hours") >= 3
    assert bars(html, "pending jobs by how long they are due") == 0  # both jobs are dead
    assert "malformed_signature 3" in html


async def test_every_page_needs_the_token(oncall: Service) -> None:  # noqa: F811
    for path in ("/oncall/search?q=x", f"/oncall/companies/{new_id()}", "/oncall/transitions",
                 f"/oncall/deliveries/{new_id()}"):
        response = await oncall.client.get(path)
        assert response.status_code == 401 and "log in" in response.text, path
    # A token in the address is refused (it would sit in logs); the login form's session
    # opens every page.
    response = await oncall.client.get("/oncall/transitions", params={"token": TOKEN})
    assert response.status_code == 400
    login = await oncall.client.post("/oncall/login", data={"token": TOKEN})
    assert (login.status_code, login.headers["location"]) == (303, "/oncall")
    for path in ("/oncall/transitions", f"/oncall/search?q={new_id()}"):
        assert (await oncall.client.get(path)).status_code == 200, path


@pytest.mark.parametrize("text", ["", "a"])
def test_nothing_is_left_unescaped_by_href(text: str) -> None:
    from service.oncall_html import href
    assert href("companies", f'"><script>{text}') == \
        "/oncall/companies/%22%3E%3Cscript%3E" + text

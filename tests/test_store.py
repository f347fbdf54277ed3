"""The row path every word takes but a PostgreSQL batch (service/store.py), on both databases:
what it writes of a connection besides its state."""

from __future__ import annotations

from handlers import word_of_event
from schemas.commands import Word
from schemas.events import (
    CompanyInfo,
    ConnectionEvent,
    ConnectionEventKind,
    ConnectionInfo,
    EventMeta,
)
from schemas.state import ConnectionStatus
from service import store
from service.db import utcnow
from tests.conftest import Service
from tests.factories import new_id


def _word(connection_id: str, company_id: str, second: int, platform_key: str | None,
          status: ConnectionStatus = ConnectionStatus.LINKED) -> Word:
    meta = EventMeta(new_id(), "connection.connected", None,
                     f"2026-11-01T12:00:{second:02d}.0000000Z")
    name = None if platform_key is None else f"platform {platform_key}"
    info = ConnectionInfo(connection_id, status, platform_key=platform_key, platform_name=name)
    event = ConnectionEvent(meta, ConnectionEventKind.CONNECTED, CompanyInfo(company_id, None),
                            info)
    return word_of_event(event, delivery_id=None, evidence=None)


async def test_a_move_keeps_the_platform_key_unless_the_word_brings_another(
        service: Service) -> None:
    # The platform key is indexed: a move sets it only when the word brings a new one (SQLite
    # would rewrite the index entry otherwise), and the stored row is what setting it always
    # gave.
    company, connection = new_id(), new_id()

    async def platform_after(second: int, key: str | None,
                             status: ConnectionStatus = ConnectionStatus.LINKED) -> str | None:
        word = _word(connection, company, second, key, status)
        verdicts = await service.db.write(lambda tx: store.apply_word(tx, word, now=utcnow()))
        assert [v.result.value for v in verdicts] == ["applied"]
        rows = await service.rows(
            "SELECT platform_key, platform_name, status FROM connections WHERE id = $1",
            connection)
        assert rows[0]["status"] == status.value
        return rows[0]["platform_key"]

    assert await platform_after(1, None, ConnectionStatus.PENDING_AUTH) is None
    assert await platform_after(2, "qhyg") == "qhyg"  # a row without one gets it
    assert await platform_after(3, None, ConnectionStatus.UNLINKED) == "qhyg"  # kept
    assert await platform_after(4, "qhyg") == "qhyg"
    assert await platform_after(5, "gbol", ConnectionStatus.UNLINKED) == "gbol"  # replaced
    rows = await service.rows("SELECT platform_name FROM connections WHERE id = $1", connection)
    assert rows[0]["platform_name"] == "platform gbol"

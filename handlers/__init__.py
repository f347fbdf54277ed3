"""Pure decisions: (event, stored snapshot) -> what to change and what to do next.

Nothing here touches the network, the database, the clock or settings.
"""

from handlers.connections import decide_connection_event, decide_move
from handlers.readiness import assess_readiness

__all__ = ["assess_readiness", "decide_connection_event", "decide_move"]

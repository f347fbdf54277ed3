"""Pure decisions: (stored state, word) -> verdict and follow-up commands; readiness.

Nothing here touches the network, the database, the clock or settings.
"""

from handlers.connections import decide, verdict, word_of_event
from handlers.readiness import assess_readiness

__all__ = ["assess_readiness", "decide", "verdict", "word_of_event"]

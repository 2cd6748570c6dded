"""A bounded share of the CPU for routine background work: anti-entropy
rounds and the 30 s refresh of non-TCP entries.

Each of their loop turns is short (a few ms), but back to back they kept
a member busy for a second at a 30k-entry table: at 10k events/s live
events then queued behind them and their lag grew to 0.1-0.2 s (make
bench-sync, UPDATE phase). After a turn that used c seconds of CPU, the
next one waits c * (1 - share) / share, so such work takes at most `share`
of a core and live events never queue behind more than one short turn. Repairs
(a full refresh after lost events, a bulk a peer asked for) are not paced:
a peer waits for them.
"""
from __future__ import annotations

import time

BACKGROUND_SHARE = 0.25
# Entries per turn: about 1 ms of CPU, the longest a live event waits
# behind such work (1024 took ~7 ms: 10 ms p99 at 10k events/s).
BACKGROUND_TURN = 128


def mark() -> float:
    """The CPU clock at the start of a turn."""
    return time.process_time()


def pause(since: float, share: float = BACKGROUND_SHARE) -> float:
    """Seconds to wait before the next turn of work begun at `since`."""
    return max(0.0, time.process_time() - since) * (1 - share) / share

"""The one timer per CARP machine that its ArmTimer actions move (asyncio)."""
from __future__ import annotations

import asyncio


def rearm(run, at: float | None, callback, *args) -> None:
    """Replace run.timer with one firing callback(*args) at loop time `at`
    (None: no timer). Vip and bucket machines both keep theirs this way."""
    if run.timer is not None:
        run.timer.cancel()
        run.timer = None
    if at is not None:
        run.timer = asyncio.get_running_loop().call_at(at, callback, *args)
